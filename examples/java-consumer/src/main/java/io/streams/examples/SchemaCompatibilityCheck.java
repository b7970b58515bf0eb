package io.streams.examples;

import java.io.File;
import java.io.IOException;

import org.apache.avro.Schema;
import org.apache.avro.SchemaCompatibility;
import org.apache.avro.SchemaCompatibility.SchemaCompatibilityType;
import org.apache.avro.SchemaCompatibility.SchemaPairCompatibility;

/**
 * Can a reader with schema READER decode data written with each WRITER schema? Apache Avro's own
 * {@link SchemaCompatibility#checkReaderWriterCompatibility}, the check Java consumers live by.
 *
 * <p>Usage: {@code SchemaCompatibilityCheck READER.avsc WRITER.avsc...}. Prints one line per
 * writer, {@code COMPATIBLE <path>} or {@code INCOMPATIBLE <path>}, and exits 1 when any writer
 * is incompatible. Avro 1.8 (Debian's, used here) describes a failure only by printing both
 * schemas; from Avro 1.9 on, {@code result.getResult().getIncompatibilities()} also names the
 * field and what broke. The project's tests name them with Avro's Python port of this check.
 */
public final class SchemaCompatibilityCheck {

    private SchemaCompatibilityCheck() {
    }

    public static void main(String[] args) throws IOException {
        if (args.length < 2) {
            System.err.println("usage: SchemaCompatibilityCheck READER.avsc WRITER.avsc...");
            System.exit(2);
        }
        // One parser per file: each schema defines the same record names.
        Schema reader = new Schema.Parser().parse(new File(args[0]));
        boolean allCompatible = true;
        for (int i = 1; i < args.length; i++) {
            Schema writer = new Schema.Parser().parse(new File(args[i]));
            SchemaPairCompatibility result = SchemaCompatibility.checkReaderWriterCompatibility(reader, writer);
            if (result.getType() == SchemaCompatibilityType.COMPATIBLE) {
                System.out.println("COMPATIBLE " + args[i]);
            } else {
                allCompatible = false;
                System.out.println("INCOMPATIBLE " + args[i]);
            }
        }
        System.exit(allCompatible ? 0 : 1);
    }
}
