"""examples/java-consumer/pom.xml stays in step with what the plain-javac build here tests."""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from tests.contract.java import JAVA_CACHE, REPO, classpath

POM = REPO / "examples" / "java-consumer" / "pom.xml"
NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def test_pom_uses_the_tested_kafka_clients_and_generates_from_the_current_schemas():
    classpath()  # fails with what to do when the jars are not fetched
    pom = ET.parse(POM).getroot()
    props = {el.tag.split("}")[1]: el.text for el in pom.find("m:properties", NS)}
    with zipfile.ZipFile(JAVA_CACHE / "lib" / "kafka-clients.jar") as jar:
        tested = dict(line.split("=", 1) for line in
                      jar.read("kafka/kafka-version.properties").decode().split() if "=" in line)
    assert props["kafka.version"] == tested["version"]
    artifacts = {d.findtext("m:artifactId", namespaces=NS) for d in pom.iterfind("m:dependencies/m:dependency", NS)}
    assert {"kafka-clients", "avro", "kafka-avro-serializer"} <= artifacts
    plugin = next(p for p in pom.iterfind("m:build/m:plugins/m:plugin", NS)
                  if p.findtext("m:artifactId", namespaces=NS) == "avro-maven-plugin")
    conf = plugin.find("m:executions/m:execution/m:configuration", NS)
    source = Path(conf.findtext("m:sourceDirectory", namespaces=NS).replace(
        "${schemas.dir}", props["schemas.dir"]).replace("${project.basedir}", str(POM.parent)))
    assert source.resolve() == REPO / "schemas"
    includes = [i.text for i in conf.iterfind("m:includes/m:include", NS)]
    assert all(list(source.glob(name)) for name in includes), includes
    # Typed fields: classes from the composed output schema (EnrichedEvent + fields), which
    # replaces the plain EnrichedEvent.avsc (the same record name may be generated only once),
    # and the field records themselves.
    field_records = sorted(p.stem for p in (source / "fields").glob("*.avsc"))
    assert field_records and "fields/*.avsc" in includes
    composed = [i for i in includes if i.startswith("enriched/")]
    assert len(composed) == 1 and composed[0] in [f"enriched/EnrichedEvent.{n}.avsc" for n in field_records]
    assert "EnrichedEvent.avsc" not in includes and "InputEvent.avsc" in includes
    assert [e.text for e in conf.iterfind("m:excludes/m:exclude", NS)] == ["history/**"]
