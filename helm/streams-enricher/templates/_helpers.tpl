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

{{/* STREAMS_LLM_MODEL: as given with source image, else under the LLM volume. */}}
{{- define "streams-enricher.llmModel" -}}
{{- $model := toString .Values.llm.model -}}
{{- if eq .Values.llm.source "image" -}}{{- $model -}}
{{- else -}}{{- printf "%s/%s" (.Values.llm.mountPath | trimSuffix "/") $model | trimSuffix "/" -}}
{{- end -}}
{{- end -}}

{{/* llm.gpuMemory in MiB ("24Gi", "40960Mi" or a number of MiB); empty when unset or the LLM is off. */}}
{{- define "streams-enricher.llmGpuMemoryMiB" -}}
{{- if and .Values.llm.enabled .Values.llm.gpuMemory -}}
{{- $v := toString .Values.llm.gpuMemory -}}
{{- if regexMatch "^[1-9][0-9]*Gi$" $v -}}{{- mul (trimSuffix "Gi" $v | atoi) 1024 -}}
{{- else if regexMatch "^[1-9][0-9]*Mi$" $v -}}{{- trimSuffix "Mi" $v | atoi -}}
{{- else if regexMatch "^[1-9][0-9]*$" $v -}}{{- atoi $v -}}
{{- else -}}{{- fail (printf "llm.gpuMemory must look like 24Gi, 40960Mi or a number of MiB, got %q" $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
`affinity` with the GPU-memory requirement of the LLM added to every required node selector
term (terms are ORed, expressions within one ANDed), as YAML of the affinity object.
*/}}
{{- define "streams-enricher.withGpuMemory" -}}
{{- $affinity := deepCopy (.affinity | default dict) -}}
{{- $mib := include "streams-enricher.llmGpuMemoryMiB" .root -}}
{{- if $mib -}}
{{- $requirement := dict "key" .root.Values.llm.gpuMemoryNodeLabel "operator" "Gt" "values" (list (toString (sub (atoi $mib) 1))) -}}
{{- $node := get $affinity "nodeAffinity" | default dict -}}
{{- $required := get $node "requiredDuringSchedulingIgnoredDuringExecution" | default dict -}}
{{- $terms := list -}}
{{- range (get $required "nodeSelectorTerms" | default (list dict)) -}}
{{- $term := deepCopy . -}}
{{- $_ := set $term "matchExpressions" (append (get $term "matchExpressions" | default list) $requirement) -}}
{{- $terms = append $terms $term -}}
{{- end -}}
{{- $_ := set $required "nodeSelectorTerms" $terms -}}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" $required -}}
{{- $_ := set $affinity "nodeAffinity" $node -}}
{{- end -}}
{{- if $affinity -}}{{- toYaml $affinity -}}{{- end -}}
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
{{- range $key := list "key" "secret" "value" -}}
{{- if hasKey $.Values.redaction $key -}}
{{- fail (printf "redaction.%s: the chart takes no keys as values; store the pseudonym key in a Secret and set redaction.existingSecret (and existingSecretKey)" $key) -}}
{{- end -}}
{{- end -}}
{{- range $route := .Values.config.topics -}}
{{- with $route.redact -}}
{{- if and (or (eq (toString .default) "pseudonym") (has "pseudonym" (values (.types | default dict)))) (not $.Values.redaction.existingSecret) -}}
{{- fail (printf "config.topics: the redaction policy of %s uses pseudonym: set redaction.existingSecret to a Secret holding the key (under redaction.existingSecretKey)" $route.input) -}}
{{- end -}}
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
{{- with .Values.schemaRegistry.tls -}}
{{- if and .existingSecret (not (hasPrefix "https://" (lower (toString $.Values.schemaRegistry.url)))) -}}
{{- fail (printf "schemaRegistry.tls.existingSecret is set but schemaRegistry.url (%q) is not https://" (toString $.Values.schemaRegistry.url)) -}}
{{- end -}}
{{- if ne (empty .certKey) (empty .keyKey) -}}
{{- fail "schemaRegistry.tls.certKey and schemaRegistry.tls.keyKey go together (mutual TLS needs both the certificate and its key)" -}}
{{- end -}}
{{- if and (or .certKey .keyKey) (not .existingSecret) -}}
{{- fail "schemaRegistry.tls.certKey/keyKey need schemaRegistry.tls.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if le (.Values.schemaRegistry.timeoutS | float64) 0.0 -}}
{{- fail (printf "schemaRegistry.timeoutS must be greater than 0, got %v" .Values.schemaRegistry.timeoutS) -}}
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
{{- $routeKeys := list "input" "output" "dlq" "labels" "entities_from" "label_from" "fields" "redact" "candidate" -}}
{{- $candidateKeys := list "name" "share" "output" "dlq" "labels" "entities_from" "label_from" "fields" "ner_model" "classifier_model" "model_version" "llm_model" "llm_few_shot" "llm_examples_dir" -}}
{{- range $i, $route := .Values.config.topics -}}
{{- if not (kindIs "map" $route) -}}
{{- fail (printf "config.topics[%d] must be a map like {input: support.tickets}" $i) -}}
{{- end -}}
{{- if not $route.input -}}
{{- fail (printf "config.topics[%d] has no input topic" $i) -}}
{{- end -}}
{{- range $key, $_ := $route -}}
{{- if not (has $key $routeKeys) -}}
{{- fail (printf "config.topics[%d] (%s): unknown key %q; a route takes %s" $i $route.input $key (join ", " $routeKeys)) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "entities_from" "label_from" -}}
{{- $from := toString (get $route $key | default "encoder") -}}
{{- if not (has $from (list "encoder" "llm")) -}}
{{- fail (printf "config.topics[%d] (%s): %s must be encoder or llm, got %q" $i $route.input $key $from) -}}
{{- end -}}
{{- if and (eq $from "llm") (not $.Values.llm.enabled) -}}
{{- fail (printf "config.topics[%d] (%s): %s is llm but llm.enabled is false: enable the LLM engine (llm.*) or use the encoder" $i $route.input $key) -}}
{{- end -}}
{{- end -}}
{{- with $route.fields -}}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" (toString .)) -}}
{{- fail (printf "config.topics[%d] (%s): fields must name an Avro record schemas/fields/<name>.avsc, got %q" $i $route.input (toString .)) -}}
{{- end -}}
{{- if not $.Values.llm.enabled -}}
{{- fail (printf "config.topics[%d] (%s): typed fields (%s) come from the LLM engine: set llm.enabled" $i $route.input (toString .)) -}}
{{- end -}}
{{- end -}}
{{- /* The route's candidate (streams.settings.Candidate): shadow traffic on a share of the events. */ -}}
{{- if and (hasKey $route "candidate") (not (kindIs "invalid" $route.candidate)) -}}
{{- $c := $route.candidate -}}
{{- $where := printf "config.topics[%d] (%s): candidate" $i $route.input -}}
{{- if not (kindIs "map" $c) -}}
{{- fail (printf "%s must be a map like {name: llm-labels, label_from: llm, share: 10}" $where) -}}
{{- end -}}
{{- range $key, $_ := $c -}}
{{- if not (has $key $candidateKeys) -}}
{{- fail (printf "%s: unknown key %q; a candidate takes %s" $where $key (join ", " $candidateKeys)) -}}
{{- end -}}
{{- end -}}
{{- $name := get $c "name" -}}
{{- if not (and (kindIs "string" $name) (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$" (toString $name))) -}}
{{- fail (printf "%s needs a name: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit (it labels its records and metrics), got %q" $where (toString ($name | default ""))) -}}
{{- end -}}
{{- if hasKey $c "share" -}}
{{- $share := get $c "share" -}}
{{- /* a number; `--set share=12.5` gives the string "12.5", which the worker reads as a number too */ -}}
{{- if not (or (kindIs "float64" $share) (kindIs "int64" $share) (kindIs "int" $share) (and (kindIs "string" $share) (regexMatch "^[0-9]+([.][0-9]+)?$" (toString $share)))) -}}
{{- fail (printf "%s (%s): share must be a number, the percent of the route's events it runs on (0 to 100), got %q" $where $name (toString $share)) -}}
{{- end -}}
{{- if or (lt ($share | float64) 0.0) (gt ($share | float64) 100.0) -}}
{{- fail (printf "%s (%s): share must be between 0 and 100 (percent of the route's events), got %v" $where $name $share) -}}
{{- end -}}
{{- end -}}
{{- range $key := list "entities_from" "label_from" -}}
{{- with get $c $key -}}
{{- if not (has (toString .) (list "encoder" "llm")) -}}
{{- fail (printf "%s (%s): %s must be encoder or llm, got %q" $where $name $key (toString .)) -}}
{{- end -}}
{{- if and (eq (toString .) "llm") (not $.Values.llm.enabled) -}}
{{- fail (printf "%s (%s): %s is llm but llm.enabled is false: a candidate that uses the LLM needs the LLM engine (llm.*), as a route does" $where $name $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with get $c "fields" -}}
{{- if not (regexMatch "^[A-Za-z_][A-Za-z0-9_]*$" (toString .)) -}}
{{- fail (printf "%s (%s): fields must name an Avro record schemas/fields/<name>.avsc, got %q" $where $name (toString .)) -}}
{{- end -}}
{{- if not $.Values.llm.enabled -}}
{{- fail (printf "%s (%s): typed fields (%s) come from the LLM engine: set llm.enabled" $where $name (toString .)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* A candidate writes topics of its own: never any route's input, output, DLQ or copy topic. */ -}}
{{- $written := list -}}
{{- $candidates := false -}}
{{- range $route := .Values.config.topics -}}
{{- $out := $route.output | default (printf "%s.enriched" $route.input) -}}
{{- $dlq := $route.dlq | default (printf "%s.dlq" $route.input) -}}
{{- $written = concat $written (list $route.input $out $dlq) -}}
{{- with $route.redact -}}{{- with .copy_topic -}}{{- $written = append $written . -}}{{- end -}}{{- end -}}
{{- with $route.candidate -}}
{{- $candidates = true -}}
{{- $written = concat $written (list (.output | default (printf "%s.shadow" $out)) (.dlq | default (printf "%s.shadow" $dlq))) -}}
{{- end -}}
{{- end -}}
{{- if $candidates -}}
{{- $clash := list -}}
{{- range $topic := $written -}}
{{- if gt (sub (len $written) (len (without $written $topic))) 1 -}}{{- $clash = append $clash $topic -}}{{- end -}}
{{- end -}}
{{- with $clash -}}
{{- fail (printf "config.topics: a candidate's output and DLQ must be topics of their own, not another input, output, DLQ or copy topic (its defaults are <route output>.shadow and <route dlq>.shadow): %s" (join ", " (uniq . | sortAlpha))) -}}
{{- end -}}
{{- end -}}
{{- if .Values.llm.enabled -}}
{{- $llmSources := list "image" "pvc" "initContainer" -}}
{{- if not (has .Values.llm.source $llmSources) -}}
{{- fail (printf "llm.source must be one of %s, got %q" (join ", " $llmSources) .Values.llm.source) -}}
{{- end -}}
{{- if and (eq .Values.llm.source "image") (not .Values.llm.model) -}}
{{- fail "llm.source is image: set llm.model to a built-in name (smollm2-135m-instruct) or an absolute path in the image" -}}
{{- end -}}
{{- if and (ne .Values.llm.source "image") (hasPrefix "/" (toString .Values.llm.model)) -}}
{{- fail (printf "llm.model (%s) is relative to the LLM volume (llm.mountPath) with source %s" .Values.llm.model .Values.llm.source) -}}
{{- end -}}
{{- if and (eq .Values.llm.source "pvc") (not .Values.llm.pvc.claimName) -}}
{{- fail "llm.source is pvc: set llm.pvc.claimName to an existing PersistentVolumeClaim holding the LLM weights" -}}
{{- end -}}
{{- if and (eq .Values.llm.source "initContainer") (not .Values.llm.initContainer.image.repository) -}}
{{- fail "llm.source is initContainer: set llm.initContainer.image.repository (and its command)" -}}
{{- end -}}
{{- if and .Values.llm.gpuMemory (not .Values.gpu.enabled) -}}
{{- fail "llm.gpuMemory needs gpu.enabled: it selects nodes by the memory of their GPUs" -}}
{{- end -}}
{{- $_ := include "streams-enricher.llmGpuMemoryMiB" . -}}
{{- range $name, $value := .Values.llm.settings -}}
{{- if not (hasPrefix "STREAMS_LLM_" $name) -}}
{{- fail (printf "llm.settings.%s: only STREAMS_LLM_* settings belong here (config.extra takes other STREAMS_* ones)" $name) -}}
{{- end -}}
{{- if regexMatch "(?i)(PASSWORD|_AUTH$|SECRET)" $name -}}
{{- fail (printf "llm.settings.%s looks like a secret: reference a Secret with extraEnv (valueFrom.secretKeyRef) instead" $name) -}}
{{- end -}}
{{- if eq $name "STREAMS_LLM_MODEL" -}}
{{- fail "llm.settings.STREAMS_LLM_MODEL: set llm.model (and llm.source) instead" -}}
{{- end -}}
{{- end -}}
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

{{- define "streams-enricher.antiAffinityPreset" -}}
{{- if eq .Values.podAntiAffinityPreset "soft" }}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "streams-enricher.selectorLabels" . | nindent 12 }}
            app.kubernetes.io/component: worker
{{- else if eq .Values.podAntiAffinityPreset "hard" }}
podAntiAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "streams-enricher.selectorLabels" . | nindent 10 }}
          app.kubernetes.io/component: worker
{{- end }}
{{- end -}}

{{/* The worker's affinity: `affinity`, or the anti-affinity preset; plus the LLM's GPU memory. */}}
{{- define "streams-enricher.affinity" -}}
{{- $affinity := .Values.affinity -}}
{{- if not $affinity -}}
{{- $affinity = include "streams-enricher.antiAffinityPreset" . | fromYaml -}}
{{- end -}}
{{- with (include "streams-enricher.withGpuMemory" (dict "root" . "affinity" $affinity) | trim) }}
affinity:
  {{- . | nindent 2 }}
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
{{- if .Values.redaction.existingSecret }}
- name: STREAMS_REDACTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redaction.existingSecret }}
      key: {{ .Values.redaction.existingSecretKey }}
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
{{- if and .Values.llm.enabled (ne .Values.llm.source "image") }}
- name: llm
  mountPath: {{ .Values.llm.mountPath }}
  readOnly: true
  {{- if eq .Values.llm.source "pvc" }}
  {{- with .Values.llm.pvc.subPath }}
  subPath: {{ . }}
  {{- end }}
  {{- end }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: {{ .Values.kafka.tls.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.schemaRegistry.tls.existingSecret }}
- name: registry-tls
  mountPath: {{ .Values.schemaRegistry.tls.mountPath }}
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
{{- if and .Values.llm.enabled (eq .Values.llm.source "pvc") }}
- name: llm
  persistentVolumeClaim:
    claimName: {{ .Values.llm.pvc.claimName }}
    readOnly: true
{{- else if and .Values.llm.enabled (eq .Values.llm.source "initContainer") }}
- name: llm
  emptyDir:
    sizeLimit: {{ .Values.llm.initContainer.sizeLimit }}
{{- end }}
{{- if .Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.schemaRegistry.tls.existingSecret }}
- name: registry-tls
  secret:
    secretName: {{ .Values.schemaRegistry.tls.existingSecret }}
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
{{- if and .Values.llm.enabled (eq .Values.llm.source "initContainer") }}
{{- $img := .Values.llm.initContainer.image }}
- name: llm
  image: {{ printf "%s%s:%s" (ternary (printf "%s/" $img.registry) "" (ne $img.registry "")) $img.repository (default "latest" ($img.tag | toString)) }}
  imagePullPolicy: {{ $img.pullPolicy }}
  command:
    {{- toYaml .Values.llm.initContainer.command | nindent 4 }}
  env:
    - name: LLM_DIR
      value: {{ .Values.llm.mountPath | quote }}
    {{- with .Values.llm.initContainer.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  {{- with .Values.llm.initContainer.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: llm
      mountPath: {{ .Values.llm.mountPath }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end -}}
