package io.streams.examples;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;

import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Reads EnrichedEvent records from an enriched topic with plain kafka-clients and Avro's
 * GenericDatumReader: no schema registry client, no generated classes.
 *
 * <p>Each value is in the Confluent wire format: magic byte 0, a 4-byte big-endian schema id,
 * then Avro binary. The writer schema is taken from the .avsc file given on the command line
 * (the service's {@code mock://} registry is in-process, so its ids mean nothing elsewhere;
 * with a real registry, look the id up there, which is what Confluent's KafkaAvroDeserializer
 * does).
 *
 * <p>Prints one JSON object per record on stdout (ASCII only, non-ASCII escaped):
 * {@code {"key":..,"partition":..,"offset":..,"schema_id":..,"event_id":..,"label":..,
 * "score":..,"entities":[{"label":..,"text":..,"start":..,"end":..}]}}
 *
 * <p>Typed fields: on a topic whose route declares a field record, the schema to pass is the
 * composed one, {@code schemas/enriched/EnrichedEvent.<FieldRecord>.avsc}, and each object
 * also has {@code "fields"}: null, or the field record as {@code {"<name>":{"type":..,"value":..}}}
 * where type is the Avro type of the value as read (an enum symbol is {@code "enum"}, a
 * nullable double that holds a number is {@code "double"}, one that is null {@code "null"}).
 * With generated SpecificRecord classes (pom.xml) the same read is
 * {@code event.getFields().getUrgency()}, an {@code io.streams.enrichment.fields.Urgency}.
 *
 * <p>Confidence: with a schema that has {@code field_confidence} (EnrichedEvent v2 and the
 * composed schemas), each object also has {@code "field_confidence"}: null, or
 * {@code {"<field>":<probability>}}, the LLM's probability for each typed field's value (a
 * {@code Map<Utf8, Double>} in a GenericRecord; {@code event.getFieldConfidence()}, a
 * {@code Map<String, Double>}, with generated classes). A service acts on a field when its value
 * is not null and its confidence passes the service's own threshold.
 *
 * <p>Redaction: with a schema that has {@code redacted_text} (EnrichedEvent v3), each object also
 * has {@code "redacted_text"}: null (a topic without a redaction policy), or the text with its
 * personal data masked, replaced, pseudonymised or dropped. A redacting route's copy topic
 * ({@code redact.copy_topic}) holds InputEvent records with the text redacted: pass
 * {@code schemas/InputEvent.avsc}, and each object has {@code "text"} instead of the label,
 * score and entities.
 *
 * <p>Stamp: with a schema that has {@code stamp} (EnrichedEvent v4), each object also has
 * {@code "stamp"}: null (a record enriched before v4), or {@code {"labels_digest":..,
 * "prompt_digest":..,"examples_digest":..,"fields_digest":..,"candidate":..}}, each a string
 * ({@code "sha256:"} and 16 hex digits) or null: what made the record besides its models. Two
 * records with equal {@code models} and {@code stamp} came from the same configuration.
 * {@code event.getStamp().getPromptDigest()} with generated classes.
 *
 * <p>Usage: {@code EnrichedEventConsumer BOOTSTRAP TOPIC GROUP SCHEMA.avsc EXPECTED TIMEOUT_S}.
 * It stops after EXPECTED distinct event ids (exit 0) or after TIMEOUT_S seconds (exit 1).
 */
public final class EnrichedEventConsumer {

    private static final byte MAGIC_BYTE = 0;

    private EnrichedEventConsumer() {
    }

    public static void main(String[] args) throws IOException {
        if (args.length != 6) {
            System.err.println("usage: EnrichedEventConsumer BOOTSTRAP TOPIC GROUP SCHEMA.avsc EXPECTED TIMEOUT_S");
            System.exit(2);
        }
        // Kafka's client logs through slf4j: warnings and errors only, on stderr.
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }
        String bootstrap = args[0];
        String topic = args[1];
        String group = args[2];
        Schema schema = new Schema.Parser().parse(Path.of(args[3]).toFile());
        int expected = Integer.parseInt(args[4]);
        long deadline = System.nanoTime() + Duration.ofSeconds(Long.parseLong(args[5])).toNanos();

        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        props.put(ConsumerConfig.SESSION_TIMEOUT_MS_CONFIG, "6000");
        props.put(ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "2000");
        props.put(ConsumerConfig.CLIENT_ID_CONFIG, "java-enriched-consumer");

        // Writer and reader schema are the same file here. A service that pins an older or
        // newer schema passes the writer's schema (by id) and its own as the reader.
        GenericDatumReader<GenericRecord> reader = new GenericDatumReader<>(schema, schema);
        BinaryDecoder decoder = null;
        Set<String> seen = new HashSet<>();
        long records = 0;

        try (KafkaConsumer<byte[], byte[]> consumer =
                 new KafkaConsumer<>(props, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            consumer.subscribe(List.of(topic));
            while (seen.size() < expected && System.nanoTime() < deadline) {
                ConsumerRecords<byte[], byte[]> batch = consumer.poll(Duration.ofMillis(500));
                for (ConsumerRecord<byte[], byte[]> rec : batch) {
                    if (rec.value() == null) {
                        continue; // tombstone
                    }
                    ByteBuffer buf = ByteBuffer.wrap(rec.value());
                    if (buf.remaining() < 5 || buf.get() != MAGIC_BYTE) {
                        throw new IllegalStateException("not Confluent-framed Avro at " + rec.topic()
                            + "/" + rec.partition() + "@" + rec.offset());
                    }
                    int schemaId = buf.getInt(); // big-endian
                    decoder = DecoderFactory.get().binaryDecoder(
                        rec.value(), 5, rec.value().length - 5, decoder);
                    GenericRecord event = reader.read(null, decoder);
                    System.out.println(toJson(rec, schemaId, event));
                    seen.add(event.get("event_id").toString());
                    records++;
                }
                if (!batch.isEmpty()) {
                    consumer.commitSync(); // after the records are handled: at-least-once
                }
            }
        }
        System.out.flush();
        System.err.printf("decoded %d records, %d distinct event ids, expected %d%n",
            records, seen.size(), expected);
        System.exit(seen.size() >= expected ? 0 : 1);
    }

    private static String toJson(ConsumerRecord<byte[], byte[]> rec, int schemaId, GenericRecord event) {
        StringBuilder out = new StringBuilder(256);
        out.append("{\"key\":");
        if (rec.key() == null) {
            out.append("null");
        } else {
            quote(out, new String(rec.key(), StandardCharsets.UTF_8));
        }
        out.append(",\"partition\":").append(rec.partition());
        out.append(",\"offset\":").append(rec.offset());
        out.append(",\"schema_id\":").append(schemaId);
        out.append(",\"event_id\":");
        quote(out, event.get("event_id").toString());
        if (event.getSchema().getField("classification") == null) { // a redacted copy: an InputEvent
            out.append(",\"text\":");
            quote(out, event.get("text").toString());
            return out.append('}').toString();
        }
        GenericRecord classification = (GenericRecord) event.get("classification");
        out.append(",\"label\":");
        quote(out, classification.get("label").toString());
        out.append(",\"score\":").append(classification.get("score"));
        out.append(",\"entities\":[");
        boolean first = true;
        for (Object item : (List<?>) event.get("entities")) {
            GenericRecord entity = (GenericRecord) item;
            out.append(first ? "" : ",").append("{\"label\":");
            quote(out, entity.get("label").toString());
            out.append(",\"text\":");
            quote(out, entity.get("text").toString());
            out.append(",\"start\":").append(entity.get("start"));
            out.append(",\"end\":").append(entity.get("end")).append('}');
            first = false;
        }
        out.append(']');
        if (event.getSchema().getField("redacted_text") != null) {
            out.append(",\"redacted_text\":");
            Object redacted = event.get("redacted_text"); // Utf8, or null without a policy
            if (redacted == null) {
                out.append("null");
            } else {
                quote(out, redacted.toString());
            }
        }
        if (event.getSchema().getField("stamp") != null) {
            out.append(",\"stamp\":");
            GenericRecord stamp = (GenericRecord) event.get("stamp"); // null before v4
            if (stamp == null) {
                out.append("null");
            } else {
                out.append('{');
                boolean firstDigest = true;
                for (Schema.Field field : stamp.getSchema().getFields()) { // in schema order
                    Object value = stamp.get(field.name()); // Utf8, or null
                    out.append(firstDigest ? "" : ",");
                    quote(out, field.name());
                    out.append(':');
                    if (value == null) {
                        out.append("null");
                    } else {
                        quote(out, value.toString());
                    }
                    firstDigest = false;
                }
                out.append('}');
            }
        }
        if (event.getSchema().getField("field_confidence") != null) {
            out.append(",\"field_confidence\":");
            Map<?, ?> confidence = (Map<?, ?>) event.get("field_confidence");
            if (confidence == null) {
                out.append("null");
            } else {
                out.append('{');
                boolean firstField = true;
                for (Map.Entry<String, Object> entry : byName(confidence).entrySet()) {
                    out.append(firstField ? "" : ",");
                    quote(out, entry.getKey());
                    out.append(':').append(entry.getValue()); // Double.toString: the same double
                    firstField = false;
                }
                out.append('}');
            }
        }
        if (event.getSchema().getField("fields") != null) {
            out.append(",\"fields\":");
            GenericRecord fields = (GenericRecord) event.get("fields");
            if (fields == null) {
                out.append("null");
            } else {
                typedFields(out, fields);
            }
        }
        return out.append('}').toString();
    }

    /**
     * Each field of the field record with the Avro type of its value: the branch the union
     * resolved to, so {@code ["null","double"]} reads as "double" or "null".
     */
    private static void typedFields(StringBuilder out, GenericRecord fields) {
        out.append('{');
        boolean first = true;
        for (Schema.Field field : fields.getSchema().getFields()) {
            Object value = fields.get(field.name());
            Schema schema = field.schema();
            if (schema.getType() == Schema.Type.UNION) {
                schema = schema.getTypes().get(GenericData.get().resolveUnion(schema, value));
            }
            out.append(first ? "" : ",");
            quote(out, field.name());
            out.append(":{\"type\":");
            quote(out, schema.getType().getName());
            out.append(",\"value\":");
            switch (schema.getType()) {
                case NULL:
                    out.append("null");
                    break;
                case ENUM:   // GenericData.EnumSymbol
                case STRING: // org.apache.avro.util.Utf8
                    quote(out, value.toString());
                    break;
                case INT:
                case LONG:
                case FLOAT:
                case DOUBLE:
                case BOOLEAN:
                    out.append(value); // Double.toString reads back as the same double
                    break;
                default:
                    throw new IllegalStateException("field " + field.name() + ": this example prints only "
                        + "primitive and enum fields, not " + schema.getType());
            }
            out.append('}');
            first = false;
        }
        out.append('}');
    }

    /** An Avro map (Utf8 keys, in no order) by key as a String, sorted: stable output. */
    private static Map<String, Object> byName(Map<?, ?> map) {
        Map<String, Object> out = new TreeMap<>();
        for (Map.Entry<?, ?> entry : map.entrySet()) {
            out.put(entry.getKey().toString(), entry.getValue());
        }
        return out;
    }

    /** A JSON string literal, ASCII only (so the platform's stdout encoding does not matter). */
    private static void quote(StringBuilder out, String s) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20 || c > 0x7e) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        out.append('"');
    }
}
