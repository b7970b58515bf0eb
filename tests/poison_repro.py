"""Issue 12 cases 1-4 against a running worker, one fresh topic per case: prints, per case,
whether the worker is alive, how many of the 2 good neighbours were enriched, the dead letters,
and the committed offset vs the end of the partition. Run from a checkout's root:
    .venv/bin/python -m tests.poison_repro [TINY_MODELS_DIR]   (default: the configured real models)"""
import json, os, subprocess, sys, time, uuid
sys.path.insert(0, os.getcwd())
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from streams.broker import EmbeddedBroker, free_port
from tests.fixtures.raw_records import RawName, build_batch, produce_raw

def good(eid): return json.dumps({"event_id": eid, "text": "maria gonzalez, my parcel has not arrived"}).encode()
CASES = {
    "1 huge integer": ("plain", (b"k", b'{"event_id": "p", "text": "hi", "n": ' + b"9" * 4400 + b"}", [])),
    "2a 1 MB value": ("plain", (b"k", json.dumps({"event_id": "p", "text": "a" * 1_100_000}).encode(), [])),
    "2b 1 MB headers": ("plain", (b"k", good("p"), [("blob", b"b" * 1_050_000)])),
    "3 bad header name": ("raw", (b"k", good("p"), [(RawName(b"\xff\xfebad"), b"v")])),
    "4 lying compression": ("lie", (b"k", good("p"), [])),
}
models = sys.argv[1] if len(sys.argv) > 1 else None
with EmbeddedBroker(free_port()) as br:
    for name, (kind, (key, value, headers)) in CASES.items():
        t = f"r{uuid.uuid4().hex[:6]}"
        a = AdminClient({"bootstrap.servers": br.bootstrap})
        for f in a.create_topics([NewTopic(x, 1, 1) for x in (t, t + ".enriched", t + ".dlq")]).values(): f.result()
        p = Producer({"bootstrap.servers": br.bootstrap, "message.max.bytes": 8_000_000})
        p.produce(t, good("before"), key=b"b"); p.flush()
        if kind == "plain": p.produce(t, value, key=key, headers=headers); p.flush()
        else: produce_raw(br.bootstrap, t, 0, build_batch([(key, value, headers)], claim_codec=1 if kind == "lie" else None))
        p.produce(t, good("after"), key=b"a"); p.flush()
        env = os.environ | {"STREAMS_KAFKA_BOOTSTRAP": br.bootstrap, "STREAMS_APP_ID": f"g-{t}",
               "STREAMS_TOPICS": json.dumps([{"input": t, "labels": {"billing": "a charge", "delivery": "a parcel"}}]),
               "STREAMS_KAFKA_SESSION_TIMEOUT_S": "6", "STREAMS_HEALTH_PORT": str(free_port()), "STREAMS_TOPIC_PARTITIONS": "1"}
        if models: env |= {"STREAMS_NER_MODEL": f"{models}/tiny-ner", "STREAMS_CLASSIFIER_MODEL": f"{models}/tiny-encoder"}
        log = open(f"/tmp/repro-{t}.log", "wb")
        w = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        c = Consumer({"bootstrap.servers": br.bootstrap, "group.id": f"r-{t}", "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
        c.subscribe([t + ".enriched", t + ".dlq"])
        enriched, dead, deadline, restarts = 0, [], time.time() + 45, 0
        while time.time() < deadline and not (enriched >= 2 and (dead or kind == "raw")):
            for m in c.consume(100, 0.5):
                if m.error(): continue
                if m.topic().endswith(".enriched"): enriched += 1
                else: dead.append(dict(m.headers() or []).get("__streams.errors.reason"))
            if w.poll() is not None:
                restarts += 1
                if restarts > 2: break
                w = subprocess.Popen([sys.executable, "-m", "streams", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(1.5)
        alive = w.poll() is None
        cc = Consumer({"bootstrap.servers": br.bootstrap, "group.id": f"g-{t}"})
        committed = cc.committed([TopicPartition(t, 0)], timeout=10)[0].offset; cc.close(); c.close()
        end = 3 if kind != "lie" else 3
        print(f"{name}: worker alive={alive} (exits seen {restarts}), enriched {enriched} (incl. poison if enriched), "
              f"dead letters {dead}, committed offset {committed} of end {end}", flush=True)
        w.terminate(); w.wait(30)
