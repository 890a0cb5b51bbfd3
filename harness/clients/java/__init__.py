"""Java's SunPKCS11 provider as a TLS client, one client per installed JDK.

jdk.py finds the JDKs, build.py compiles the bundled java/P11TlsClient.java,
jvm.py runs it as a warm JVM, client.py holds the client classes.
"""

from harness.clients.java.build import (
    MAIN_CLASS,
    build_classes,
    default_cache_dir,
    find_java_sources,
)
from harness.clients.java.client import (
    COMBINED_MECHANISMS,
    DEFAULT_JAVA_OPTIONS,
    JavaClient,
    JavaNoCombinedClient,
    JavaResult,
)
from harness.clients.java.jdk import JDK, MIN_JAVA, discover_jdks, find_jdk, jdk_variants
from harness.clients.java.jvm import SlotRef, decode_answer, encode_request, find_slot

__all__ = ["COMBINED_MECHANISMS", "DEFAULT_JAVA_OPTIONS", "JDK", "MAIN_CLASS", "MIN_JAVA",
           "JavaClient", "JavaNoCombinedClient", "JavaResult", "SlotRef", "build_classes",
           "decode_answer", "default_cache_dir", "discover_jdks", "encode_request",
           "find_java_sources", "find_jdk", "find_slot", "jdk_variants"]
