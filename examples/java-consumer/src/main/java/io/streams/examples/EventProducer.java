package io.streams.examples;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Publishes support-ticket events to an input topic the way a Java service does: plain
 * kafka-clients, {@code KafkaProducer<String, String>}, the default partitioner (murmur2 of
 * the key), {@code acks=all}, idempotence on, compressed batches.
 *
 * <p>Each value is a JSON object {@code {"event_id":..,"event_type":"ticket.created",
 * "customer_id":..,"text":..}}, keyed by the customer. Every key gets PER_KEY events in a
 * sequence: the event id is {@code <key>-<seq>}, so a reader can check per-key order. Texts are
 * realistic tickets of very different lengths, so a consumer that sorts a batch by length
 * would visibly reorder them. Records are sent round-robin over the keys with a linger, so
 * several keys' records share each compressed batch.
 *
 * <p>Transactional mode ({@code --transactions commit,abort}, any list of commit/abort): the
 * producer calls {@code initTransactions()} and runs one transaction per entry, each with
 * PER_KEY events per key; sequence numbers continue across transactions, and the events of an
 * aborted transaction have ids {@code aborted-<key>-<seq>}. Each transaction is flushed before
 * it is committed or aborted, so an aborted one's records really are in the log.
 *
 * <p>Prints one JSON object per acknowledged record on stdout (ASCII only), after the record's
 * transaction ended when there is one: {@code {"event_id":..,"key":..,"partition":..,
 * "offset":..,"transaction":"none"|"committed"|"aborted","compression":..}}. Exits 1 on any
 * failed send, 2 on bad arguments.
 *
 * <p>Usage: {@code EventProducer BOOTSTRAP TOPIC COMPRESSION KEYS PER_KEY
 * [--transactions commit,abort] [--linger-ms MS]}, COMPRESSION one of none, gzip, snappy,
 * lz4, zstd.
 */
public final class EventProducer {

    private static final Set<String> CODECS = Set.of("none", "gzip", "snappy", "lz4", "zstd");

    /** Ticket texts from a one-liner to a long complaint, with names, emails, cities and ids. */
    private static final String[] TEXTS = {
        "Where is my order?",
        "I was charged twice for order A-10023, please refund one of the charges.",
        "The parcel has not arrived, tracking says it has been in Denver since Monday.",
        "hello my name is Maria Gonzalez and my email is maria.gonzalez@example.com",
        "Cancel my subscription.",
        "Hi, this is Jos\u00e9 M\u00fcller from K\u00f6ln. The invoice for March lists a premium plan "
            + "I never ordered, and the amount was taken from my card on the 3rd. I called twice and was "
            + "told someone would get back to me within 48 hours, but nobody did. Please correct the "
            + "invoice and refund the difference to the card ending in 4242.",
        "Gift wrap please, and leave it at the door.",
        "My package arrived damaged: the box was crushed and the glass inside is broken. Can you send "
            + "a replacement to 221B Baker Street, London?",
        "Refund?",
        "The courier marked order B-77 as delivered yesterday at 14:05 but nothing is here. My neighbour "
            + "at number 12 did not get it either. Could you open an investigation with the carrier and let "
            + "me know whether you will reship it or refund me? I need it before Friday for a birthday.",
        "Please update my billing address to 500 Market St, San Francisco, CA 94105.",
        "Thanks, the replacement came today \u2014 all good now!",
    };

    private EventProducer() {
    }

    public static void main(String[] args) throws InterruptedException {
        if (args.length < 5) {
            usage("missing arguments");
        }
        String bootstrap = args[0];
        String topic = args[1];
        String compression = args[2].toLowerCase(Locale.ROOT);
        if (!CODECS.contains(compression)) {
            usage("COMPRESSION must be one of " + CODECS + ", not " + args[2]);
        }
        int keys = positive(args[3], "KEYS");
        int perKey = positive(args[4], "PER_KEY");
        List<String> transactions = new ArrayList<>();
        String lingerMs = "50";
        for (int i = 5; i < args.length; i += 2) {
            if (i + 1 >= args.length) {
                usage(args[i] + " needs a value");
            }
            switch (args[i]) {
                case "--transactions":
                    for (String t : args[i + 1].split(",")) {
                        if (!t.equals("commit") && !t.equals("abort")) {
                            usage("--transactions takes a list of commit/abort, not " + args[i + 1]);
                        }
                        transactions.add(t);
                    }
                    break;
                case "--linger-ms":
                    lingerMs = Integer.toString(positive(args[i + 1], "--linger-ms"));
                    break;
                default:
                    usage("unknown option " + args[i]);
            }
        }
        // Kafka's client logs through slf4j: warnings and errors only, on stderr.
        if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
            System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        }

        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.CLIENT_ID_CONFIG, "java-event-producer");
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, compression);
        props.put(ProducerConfig.LINGER_MS_CONFIG, lingerMs); // so several records share a batch
        props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        props.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "10000");
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "30000");
        // No partitioner.class: the default partitioner, murmur2 of the key bytes.
        boolean transactional = !transactions.isEmpty();
        if (transactional) {
            props.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "java-event-producer-" + topic);
        }

        ConcurrentLinkedQueue<String> failures = new ConcurrentLinkedQueue<>();
        List<String> lines = new ArrayList<>();
        try (KafkaProducer<String, String> producer =
                 new KafkaProducer<>(props, new StringSerializer(), new StringSerializer())) {
            if (!transactional) {
                List<Sent> sent = sendRound(producer, topic, keys, perKey, 0, "", failures);
                producer.flush();
                report(lines, sent, "none", compression);
            } else {
                producer.initTransactions();
                int seq = 0;
                for (String outcome : transactions) {
                    boolean abort = outcome.equals("abort");
                    producer.beginTransaction();
                    List<Sent> sent = sendRound(producer, topic, keys, perKey, seq, abort ? "aborted-" : "",
                                                failures);
                    producer.flush(); // every record acknowledged, so an aborted one is in the log too
                    if (!failures.isEmpty()) {
                        break;
                    }
                    if (abort) {
                        producer.abortTransaction();
                    } else {
                        producer.commitTransaction();
                    }
                    report(lines, sent, abort ? "aborted" : "committed", compression);
                    seq += perKey;
                }
            }
        }
        lines.forEach(System.out::println);
        System.out.flush();
        if (!failures.isEmpty()) {
            failures.forEach(System.err::println);
            System.err.printf("%d send(s) failed%n", failures.size());
            System.exit(1);
        }
        System.err.printf("sent %d records to %s (%s%s)%n", lines.size(), topic, compression,
                          transactional ? ", transactions " + String.join(",", transactions) : "");
    }

    /** A record handed to the producer and, once its callback ran, where it landed. */
    private static final class Sent {
        final String eventId;
        final String key;
        final CountDownLatch done = new CountDownLatch(1);
        volatile RecordMetadata metadata;

        Sent(String eventId, String key) {
            this.eventId = eventId;
            this.key = key;
        }
    }

    /** PER_KEY events for each key, round-robin over the keys, sequence numbers from firstSeq. */
    private static List<Sent> sendRound(KafkaProducer<String, String> producer, String topic, int keys,
                                        int perKey, int firstSeq, String idPrefix,
                                        ConcurrentLinkedQueue<String> failures) {
        List<Sent> sent = new ArrayList<>();
        for (int seq = firstSeq; seq < firstSeq + perKey; seq++) {
            for (int k = 0; k < keys; k++) {
                String key = String.format(Locale.ROOT, "customer-%03d", k);
                String eventId = idPrefix + key + "-" + seq;
                String text = TEXTS[(k * 5 + seq * 7) % TEXTS.length];
                StringBuilder value = new StringBuilder(256).append("{\"event_id\":");
                quote(value, eventId);
                value.append(",\"event_type\":\"ticket.created\",\"customer_id\":");
                quote(value, key);
                value.append(",\"text\":");
                quoteUtf8(value, text); // non-ASCII as is: StringSerializer writes UTF-8
                value.append('}');
                Sent s = new Sent(eventId, key);
                sent.add(s);
                producer.send(new ProducerRecord<>(topic, key, value.toString()), (metadata, error) -> {
                    if (error != null) {
                        failures.add("send " + s.eventId + " failed: " + error);
                    } else {
                        s.metadata = metadata;
                    }
                    s.done.countDown();
                });
            }
        }
        return sent;
    }

    private static void report(List<String> lines, List<Sent> sent, String transaction, String compression)
        throws InterruptedException {
        for (Sent s : sent) {
            if (!s.done.await(30, TimeUnit.SECONDS) || s.metadata == null) {
                continue; // its failure is in `failures`
            }
            StringBuilder out = new StringBuilder(160).append("{\"event_id\":");
            quote(out, s.eventId);
            out.append(",\"key\":");
            quote(out, s.key);
            out.append(",\"partition\":").append(s.metadata.partition());
            out.append(",\"offset\":").append(s.metadata.offset());
            out.append(",\"transaction\":\"").append(transaction).append('"');
            out.append(",\"compression\":\"").append(compression).append("\"}");
            lines.add(out.toString());
        }
    }

    private static int positive(String value, String name) {
        try {
            int n = Integer.parseInt(value);
            if (n > 0) {
                return n;
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        usage(name + " must be a positive integer, not " + value);
        return 0; // not reached
    }

    private static void usage(String problem) {
        System.err.println(problem);
        System.err.println("usage: EventProducer BOOTSTRAP TOPIC none|gzip|snappy|lz4|zstd KEYS PER_KEY "
                           + "[--transactions commit,abort] [--linger-ms MS]");
        System.exit(2);
    }

    /** A JSON string literal, ASCII only (so the platform's stdout encoding does not matter). */
    private static void quote(StringBuilder out, String s) {
        quote(out, s, true);
    }

    /** A JSON string literal that keeps non-ASCII characters, as a JSON library writes them. */
    private static void quoteUtf8(StringBuilder out, String s) {
        quote(out, s, false);
    }

    private static void quote(StringBuilder out, String s, boolean asciiOnly) {
        out.append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20 || (asciiOnly && c > 0x7e)) {
                out.append(String.format(Locale.ROOT, "\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        out.append('"');
    }
}
