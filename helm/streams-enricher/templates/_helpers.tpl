{{/* vim: set filetype=mustache: */}}

{{- define "streams-enricher.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streams-enricher.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "streams-enricher.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streams-enricher.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streams-enricher.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "streams-enricher.labels" -}}
helm.sh/chart: {{ include "streams-enricher.chart" . }}
{{ include "streams-enricher.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streams
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* metadata.annotations block for every resource (empty when there are none) */}}
{{- define "streams-enricher.annotations" -}}
{{- with .Values.commonAnnotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "streams-enricher.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streams-enricher.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streams-enricher.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.registry -}}{{- $repo = printf "%s/%s" .Values.image.registry $repo -}}{{- end -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag | toString) -}}
{{- end -}}
{{- end -}}

{{- define "streams-enricher.modelInitImage" -}}
{{- $img := .Values.models.initContainer.image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry -}}{{- $repo = printf "%s/%s" $img.registry $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (default "latest" ($img.tag | toString)) -}}
{{- end -}}

{{- define "streams-enricher.configMapName" -}}
{{- printf "%s-config" (include "streams-enricher.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streams-enricher.modelCache" -}}
{{- printf "%s/models" (.Values.cache.mountPath | trimSuffix "/") -}}
{{- end -}}

{{- define "streams-enricher.device" -}}
{{- if .Values.config.device -}}{{- .Values.config.device -}}
{{- else if .Values.gpu.enabled -}}cuda
{{- else -}}cpu
{{- end -}}
{{- end -}}

{{/* Input topics: config.topics' inputs, or the worker's built-in routes. */}}
{{- define "streams-enricher.inputTopics" -}}
{{- $topics := list -}}
{{- range .Values.config.topics -}}{{- $topics = append $topics .input -}}{{- end -}}
{{- if not $topics -}}{{- $topics = list "orders.notes" "support.tickets" -}}{{- end -}}
{{- toJson $topics -}}
{{- end -}}

{{- define "streams-enricher.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{- define "streams-enricher.tlsEnabled" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{/*
Rendering fails here, with a message that says what to change, on values that would deploy
a worker that cannot work: checked by tests/helm.
*/}}
{{- define "streams-enricher.validate" -}}
{{- $grace := .Values.config.shutdownGraceS | float64 -}}
{{- $term := .Values.terminationGracePeriodSeconds | float64 -}}
{{- if le $term $grace -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be greater than config.shutdownGraceS (%v): Kubernetes kills the pod at terminationGracePeriodSeconds, so the worker needs its grace period plus time to commit and leave the group (e.g. 60 with a grace of 45)" .Values.terminationGracePeriodSeconds .Values.config.shutdownGraceS) -}}
{{- end -}}
{{- $partitions := .Values.config.topicPartitions | int -}}
{{- if lt $partitions 1 -}}
{{- fail (printf "config.topicPartitions must be at least 1, got %v" .Values.config.topicPartitions) -}}
{{- end -}}
{{- if .Values.autoscaling.keda.enabled -}}
{{- $max := .Values.autoscaling.keda.maxReplicaCount | int -}}
{{- $min := .Values.autoscaling.keda.minReplicaCount | int -}}
{{- if gt $max $partitions -}}
{{- fail (printf "autoscaling.keda.maxReplicaCount (%d) must not exceed the partitions of the input topics (config.topicPartitions = %d): a consumer group never gives one partition to two workers, so replicas beyond the partition count sit idle on a GPU. Lower maxReplicaCount or add partitions (and raise config.topicPartitions)" $max $partitions) -}}
{{- end -}}
{{- if or (lt $min 0) (gt $min $max) -}}
{{- fail (printf "autoscaling.keda.minReplicaCount (%d) must be between 0 and maxReplicaCount (%d)" $min $max) -}}
{{- end -}}
{{- else if gt (.Values.replicaCount | int) $partitions -}}
{{- fail (printf "replicaCount (%v) must not exceed the partitions of the input topics (config.topicPartitions = %d): extra workers would sit idle on a GPU" .Values.replicaCount $partitions) -}}
{{- end -}}
{{- $protocols := list "PLAINTEXT" "SSL" "SASL_PLAINTEXT" "SASL_SSL" -}}
{{- if not (has .Values.kafka.securityProtocol $protocols) -}}
{{- fail (printf "kafka.securityProtocol must be one of %s, got %q" (join ", " $protocols) .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- range $key := list "password" "existingSecretPassword" -}}
{{- if hasKey $.Values.kafka.sasl $key -}}
{{- fail (printf "kafka.sasl.%s: the chart takes no passwords as values; store it in a Secret and set kafka.sasl.existingSecret (and existingSecretPasswordKey)" $key) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "auth" "password" "basicAuth" -}}
{{- if hasKey $.Values.schemaRegistry $key -}}
{{- fail (printf "schemaRegistry.%s: the chart takes no credentials as values; store `user:password` in a Secret and set schemaRegistry.existingSecret (and existingSecretAuthKey)" $key) -}}
{{- end -}}
{{- end -}}
{{- if include "streams-enricher.saslEnabled" . -}}
{{- $mechanisms := list "PLAIN" "SCRAM-SHA-256" "SCRAM-SHA-512" -}}
{{- if not (has .Values.kafka.sasl.mechanism $mechanisms) -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.mechanism: one of %s" .Values.kafka.securityProtocol (join ", " $mechanisms)) -}}
{{- end -}}
{{- if not .Values.kafka.sasl.existingSecret -}}
{{- fail (printf "kafka.securityProtocol %s needs kafka.sasl.existingSecret: the name of a Secret holding the SASL password under kafka.sasl.existingSecretPasswordKey (%q)" .Values.kafka.securityProtocol .Values.kafka.sasl.existingSecretPasswordKey) -}}
{{- end -}}
{{- if and (not .Values.kafka.sasl.username) (not .Values.kafka.sasl.existingSecretUsernameKey) -}}
{{- fail "SASL needs a username: set kafka.sasl.username or kafka.sasl.existingSecretUsernameKey" -}}
{{- end -}}
{{- else if .Values.kafka.sasl.mechanism -}}
{{- fail (printf "kafka.sasl.mechanism is set but kafka.securityProtocol is %s: use SASL_PLAINTEXT or SASL_SSL" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if and .Values.kafka.tls.existingSecret (not (include "streams-enricher.tlsEnabled" .)) -}}
{{- fail (printf "kafka.tls.existingSecret is set but kafka.securityProtocol is %s: use SSL or SASL_SSL" .Values.kafka.securityProtocol) -}}
{{- end -}}
{{- if ne (empty .Values.kafka.tls.certKey) (empty .Values.kafka.tls.keyKey) -}}
{{- fail "kafka.tls.certKey and kafka.tls.keyKey go together (mutual TLS needs both the certificate and its key)" -}}
{{- end -}}
{{- if and (or .Values.kafka.tls.certKey .Values.kafka.tls.keyKey) (not .Values.kafka.tls.existingSecret) -}}
{{- fail "kafka.tls.certKey/keyKey need kafka.tls.existingSecret" -}}
{{- end -}}
{{- $sources := list "image" "pvc" "initContainer" -}}
{{- if not (has .Values.models.source $sources) -}}
{{- fail (printf "models.source must be one of %s, got %q" (join ", " $sources) .Values.models.source) -}}
{{- end -}}
{{- if and (eq .Values.models.source "pvc") (not .Values.models.pvc.claimName) -}}
{{- fail "models.source is pvc: set models.pvc.claimName to an existing PersistentVolumeClaim holding a prepared model cache" -}}
{{- end -}}
{{- if and (eq .Values.models.source "initContainer") (not .Values.models.initContainer.image.repository) -}}
{{- fail "models.source is initContainer: set models.initContainer.image.repository (and its command)" -}}
{{- end -}}
{{- $probes := or .Values.startupProbe.enabled .Values.livenessProbe.enabled .Values.readinessProbe.enabled -}}
{{- if and (lt (.Values.config.healthPort | int) 1) (or $probes .Values.service.enabled .Values.metrics.serviceMonitor.enabled) -}}
{{- fail "config.healthPort is 0 (health server off): disable the probes, the Service and the ServiceMonitor too, or set a port" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs service.enabled" -}}
{{- end -}}
{{- if .Values.replay.enabled -}}
{{- if not .Values.replay.topic -}}
{{- fail "replay.enabled: set replay.topic (the input topic to replay)" -}}
{{- end -}}
{{- if and (not .Values.replay.from) (eq (toString .Values.replay.fromOffset) "") -}}
{{- fail "replay.enabled: set replay.from (an ISO 8601 time) or replay.fromOffset" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Scheduling fields shared by the worker and the replay pods. */}}
{{- define "streams-enricher.scheduling" -}}
{{- with .Values.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "streams-enricher.affinity" -}}
{{- if .Values.affinity }}
affinity:
  {{- toYaml .Values.affinity | nindent 2 }}
{{- else if eq .Values.podAntiAffinityPreset "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "streams-enricher.selectorLabels" . | nindent 14 }}
              app.kubernetes.io/component: worker
{{- else if eq .Values.podAntiAffinityPreset "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "streams-enricher.selectorLabels" . | nindent 12 }}
            app.kubernetes.io/component: worker
{{- end }}
{{- end -}}

{{/* Resources with the GPU limit added from gpu.* */}}
{{- define "streams-enricher.resources" -}}
{{- $resources := deepCopy (.resources | default dict) -}}
{{- if .root.Values.gpu.enabled -}}
{{- $limits := deepCopy (get $resources "limits" | default dict) -}}
{{- $_ := set $limits .root.Values.gpu.resourceName (.root.Values.gpu.count | int) -}}
{{- $_ := set $resources "limits" $limits -}}
{{- end -}}
{{- toYaml $resources -}}
{{- end -}}

{{/* Environment of the worker and replay containers: secrets by reference only. */}}
{{- define "streams-enricher.env" -}}
{{- range $name, $value := .Values.offlineEnv }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- if include "streams-enricher.saslEnabled" . }}
{{- if .Values.kafka.sasl.existingSecretUsernameKey }}
- name: STREAMS_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.existingSecretUsernameKey }}
{{- end }}
- name: STREAMS_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafka.sasl.existingSecret }}
      key: {{ .Values.kafka.sasl.existingSecretPasswordKey }}
{{- end }}
{{- if .Values.schemaRegistry.existingSecret }}
- name: STREAMS_SCHEMA_REGISTRY_AUTH
  valueFrom:
    secretKeyRef:
      name: {{ .Values.schemaRegistry.existingSecret }}
      key: {{ .Values.schemaRegistry.existingSecretAuthKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "streams-enricher.envFrom" -}}
- configMapRef:
    name: {{ include "streams-enricher.configMapName" . }}
{{- with .Values.extraEnvFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "streams-enricher.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: cache
  mountPath: {{ .Values.cache.mountPath }}
{{- if eq .Values.models.source "pvc" }}
- name: models
  mountPath: {{ include "streams-enricher.modelCache" . }}
  readOnly: true
  {{- with .Values.models.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "streams-enricher.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmp.sizeLimit }}
- name: cache
  emptyDir:
    {{- with .Values.cache.medium }}
    medium: {{ . }}
    {{- end }}
    sizeLimit: {{ .Values.cache.sizeLimit }}
{{- if eq .Values.models.source "pvc" }}
- name: models
  persistentVolumeClaim:
    claimName: {{ .Values.models.pvc.claimName }}
    readOnly: true
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Init container that puts the models into the writable cache (sources image and initContainer). */}}
{{- define "streams-enricher.initContainers" -}}
{{- if eq .Values.models.source "image" }}
- name: models
  image: {{ include "streams-enricher.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - sh
    - -c
    - mkdir -p "$STREAMS_MODEL_CACHE" && cp -R "$MODELS_IN_IMAGE"/. "$STREAMS_MODEL_CACHE"/
  env:
    - name: MODELS_IN_IMAGE
      value: {{ .Values.models.image.path | quote }}
    - name: STREAMS_MODEL_CACHE
      value: {{ include "streams-enricher.modelCache" . | quote }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  resources:
    requests:
      cpu: 100m
      memory: 128Mi
    limits:
      memory: 256Mi
  volumeMounts:
    - name: cache
      mountPath: {{ .Values.cache.mountPath }}
{{- else if eq .Values.models.source "initContainer" }}
- name: models
  image: {{ include "streams-enricher.modelInitImage" . }}
  imagePullPolicy: {{ .Values.models.initContainer.image.pullPolicy }}
  command:
    {{- toYaml .Values.models.initContainer.command | nindent 4 }}
  env:
    - name: STREAMS_MODEL_CACHE
      value: {{ include "streams-enricher.modelCache" . | quote }}
    {{- with .Values.models.initContainer.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  {{- with .Values.models.initContainer.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: cache
      mountPath: {{ .Values.cache.mountPath }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end -}}
