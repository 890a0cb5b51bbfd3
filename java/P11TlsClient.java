/*
 * The harness's Java TLS client: one warm JVM per SunPKCS11 configuration,
 * driven over stdin/stdout, one line per request and one line per answer.
 *
 *   java -cp CLASSES P11TlsClient CONFIG_FILE
 *
 * Lines are words separated by single spaces: a verb, then key=value pairs
 * whose values are URL-encoded (application/x-www-form-urlencoded, UTF-8).
 *
 *   JVM    ready provider=SunPKCS11-p11tls java=17.0.15+6      (after configure)
 *   JVM    fatal error=...                                     (configure failed; exits 2)
 *   harness login pin=... log=CASE_LOG
 *   JVM    ok | fail ckr=CKR_PIN_INCORRECT error=...
 *   harness handshake host=.. port=.. tls=1.2|1.3 label=.. id=HEX cert=PEM ca=PEM
 *                     timeout_ms=.. log=CASE_LOG
 *   JVM    ok protocol=TLSv1.2 cipher=.. alias=.. ms=..
 *   JVM    fail ckr=CKR_...|"" timeout=0|1 error=...
 *
 * Everything else the JVM prints (exception chains, -Djavax.net.debug output)
 * goes to the case log named in the request, or to stderr between requests.
 * stdout carries the protocol only: System.out is pointed at stderr.
 *
 * Only the JDK is needed: javac P11TlsClient.java.
 */

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.FileDescriptor;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.io.PrintStream;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.net.SocketTimeoutException;
import java.net.URLDecoder;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.MessageDigest;
import java.security.Principal;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.net.ssl.KeyManager;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLEngine;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;
import javax.net.ssl.X509ExtendedKeyManager;

public final class P11TlsClient {

    private static final Pattern CKR = Pattern.compile("CKR_[A-Z0-9_]+|CKR_0x[0-9A-Fa-f]+");

    private final PrintStream protocol;
    private final PrintStream jvmErr;
    private final Provider provider;
    private KeyStore keyStore;
    private char[] pin;
    private String loginError; // set once: the PIN is never sent to the token again
    private String loginCkr;
    private final Map<String, SelectedKey> keys = new HashMap<>();
    private final Map<String, SSLContext> contexts = new HashMap<>();

    private P11TlsClient(PrintStream protocol, PrintStream jvmErr, Provider provider) {
        this.protocol = protocol;
        this.jvmErr = jvmErr;
        this.provider = provider;
    }

    public static void main(String[] args) throws IOException {
        PrintStream protocol = new PrintStream(
                new FileOutputStream(FileDescriptor.out), true, StandardCharsets.UTF_8);
        PrintStream jvmErr = System.err;
        System.setOut(jvmErr); // a stray println must never corrupt the protocol
        if (args.length != 1) {
            reply(protocol, "fatal", "error", "usage: java P11TlsClient SUNPKCS11_CONFIG");
            System.exit(2);
        }
        Provider provider;
        try {
            provider = Security.getProvider("SunPKCS11").configure(args[0]);
            // Appended, never inserted first: with SunPKCS11 first, JSSE's record
            // crypto and key exchange would go to the token as well.
            Security.addProvider(provider);
        } catch (Throwable e) {
            e.printStackTrace(jvmErr);
            reply(protocol, "fatal", "ckr", ckrOf(e), "error", chainSummary(e));
            System.exit(2);
            return;
        }
        jvmErr.println("p11tls: provider " + provider.getName() + " added at position "
                + (List.of(Security.getProviders()).indexOf(provider) + 1) + " of "
                + Security.getProviders().length);
        reply(protocol, "ready", "provider", provider.getName(),
                "java", System.getProperty("java.runtime.version"));
        new P11TlsClient(protocol, jvmErr, provider).serve();
    }

    private void serve() throws IOException {
        BufferedReader in = new BufferedReader(
                new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            if (line.isBlank()) {
                continue;
            }
            Map<String, String> req = parse(line);
            String verb = req.get("");
            String[] answer;
            PrintStream caseLog = openCaseLog(req.get("log"));
            if (caseLog != null) {
                System.setErr(caseLog);
                System.setOut(caseLog);
            }
            try {
                if ("login".equals(verb)) {
                    answer = login(req);
                } else if ("handshake".equals(verb)) {
                    answer = handshake(req);
                } else {
                    answer = new String[] {"fail", "ckr", "", "error", "unknown request " + verb};
                }
            } catch (Throwable e) { // a bug here must not kill the warm JVM
                e.printStackTrace();
                answer = new String[] {"fail", "ckr", ckrOf(e), "error", chainSummary(e)};
            } finally {
                System.out.flush();
                System.err.flush();
                System.setErr(jvmErr);
                System.setOut(jvmErr);
                if (caseLog != null) {
                    caseLog.close();
                }
            }
            reply(protocol, answer);
        }
    }

    // -- login: exactly one C_Login per JVM ------------------------------------

    private String[] login(Map<String, String> req) {
        if (loginError != null) {
            System.err.println("p11tls: login refused earlier, not retried: " + loginError);
            return new String[] {"fail", "ckr", loginCkr, "error", loginError};
        }
        if (keyStore != null) {
            return new String[] {"ok"};
        }
        char[] given = req.getOrDefault("pin", "").toCharArray();
        try {
            KeyStore ks = KeyStore.getInstance("PKCS11", provider);
            ks.load(null, given); // C_Login
            keyStore = ks;
            pin = given;
            System.err.println("p11tls: logged in to " + provider.getName() + "; aliases "
                    + Collections.list(ks.aliases()));
            return new String[] {"ok"};
        } catch (Throwable e) {
            System.err.println("p11tls: login failed; the PIN will not be sent again");
            e.printStackTrace();
            loginCkr = ckrOf(e);
            loginError = "login: " + chainSummary(e);
            return new String[] {"fail", "ckr", loginCkr, "error", loginError};
        }
    }

    // -- one full handshake ----------------------------------------------------

    private String[] handshake(Map<String, String> req) throws Exception {
        if (loginError != null) {
            System.err.println("p11tls: login refused earlier, not retried: " + loginError);
            return new String[] {"fail", "ckr", loginCkr, "timeout", "0", "error", loginError};
        }
        if (keyStore == null) {
            return new String[] {"fail", "ckr", "", "timeout", "0", "error", "not logged in"};
        }
        String host = req.get("host");
        int port = Integer.parseInt(req.get("port"));
        String tls = req.get("tls");
        String protocolName;
        if ("1.2".equals(tls)) {
            protocolName = "TLSv1.2";
        } else if ("1.3".equals(tls)) {
            protocolName = "TLSv1.3";
        } else {
            throw new IllegalArgumentException("tls must be 1.2 or 1.3, got " + tls);
        }
        int timeoutMs = Integer.parseInt(req.getOrDefault("timeout_ms", "20000"));
        System.err.println("p11tls: " + protocolName + " to " + host + ":" + port + " with key "
                + req.get("label") + " (id " + req.get("id") + ")");

        SelectedKey key;
        try {
            key = selectKey(req.get("label"), req.get("id"), Path.of(req.get("cert")));
        } catch (Exception e) {
            e.printStackTrace();
            return new String[] {"fail", "ckr", ckrOf(e), "timeout", "0",
                "error", "key selection: " + chainSummary(e)};
        }
        SSLContext context = contextFor(key, Path.of(req.get("ca")));

        long start = System.nanoTime();
        String negotiated = null;
        String cipher = null;
        SSLSocket socket = null;
        try {
            Socket raw = new Socket();
            raw.setTcpNoDelay(true); // else Nagle adds ~40 ms per TLS 1.2 flight
            raw.connect(new InetSocketAddress(host, port), timeoutMs);
            raw.setSoTimeout(timeoutMs);
            socket = (SSLSocket) context.getSocketFactory().createSocket(raw, host, port, true);
            socket.setEnabledProtocols(new String[] {protocolName});
            SSLParameters params = socket.getSSLParameters();
            params.setEndpointIdentificationAlgorithm("HTTPS");
            socket.setSSLParameters(params);
            socket.startHandshake();
            negotiated = socket.getSession().getProtocol();
            cipher = socket.getSession().getCipherSuite();
            // In TLS 1.3 the server judges our certificate after our Finished, so
            // startHandshake() returns before its verdict. Send close_notify and
            // read to the end: a rejection arrives as an alert, acceptance as the
            // server's tickets and close_notify.
            if ("TLSv1.3".equals(negotiated)) {
                socket.shutdownOutput();
                InputStream in = socket.getInputStream();
                byte[] buf = new byte[4096];
                while (in.read(buf) != -1) {
                    // the server sends no application data; discard anything
                }
            }
            double ms = (System.nanoTime() - start) / 1e6;
            System.err.printf("p11tls: ok %s %s in %.1f ms%n", negotiated, cipher, ms);
            return new String[] {"ok", "protocol", negotiated, "cipher", cipher,
                "alias", key.alias, "ms", String.format("%.2f", ms)};
        } catch (Exception e) {
            e.printStackTrace();
            boolean timedOut = hasCause(e, SocketTimeoutException.class);
            String[] answer = {"fail", "ckr", ckrOf(e), "timeout", timedOut ? "1" : "0",
                "error", chainSummary(e), "protocol", negotiated == null ? "" : negotiated,
                "cipher", cipher == null ? "" : cipher};
            return answer;
        } finally {
            if (socket != null) {
                // Full handshakes only: a cached session would skip CertificateVerify.
                socket.getSession().invalidate();
                try {
                    socket.close();
                } catch (IOException ignored) {
                    // already reset by the peer
                }
            }
        }
    }

    /** The key whose certificate is `certPem`, found by its label (the KeyStore alias). */
    private SelectedKey selectKey(String label, String idHex, Path certPem) throws Exception {
        X509Certificate expected = readCerts(certPem).get(0);
        String cacheKey = label + "\0" + idHex + "\0" + fingerprint(expected);
        SelectedKey cached = keys.get(cacheKey);
        if (cached != null) {
            return cached;
        }
        SelectedKey found = findKey(label, expected);
        if (found == null) {
            // Created after the KeyStore was loaded: map the token's objects again.
            // Already logged in, so this sends no second C_Login.
            System.err.println("p11tls: alias " + label + " not mapped yet, reloading KeyStore");
            keyStore.load(null, pin);
            found = findKey(label, expected);
        }
        if (found == null) {
            throw new IllegalStateException("no private key with certificate "
                    + expected.getSubjectX500Principal() + " (label " + label + ", id " + idHex
                    + ") on the token; KeyStore aliases: " + Collections.list(keyStore.aliases()));
        }
        System.err.println("p11tls: key alias " + found.alias + " " + found.key.getAlgorithm()
                + ", certificate " + expected.getSubjectX500Principal());
        keys.put(cacheKey, found);
        return found;
    }

    private SelectedKey findKey(String label, X509Certificate expected) throws Exception {
        // SunPKCS11 names a key entry after its certificate's CKA_LABEL and pairs
        // key and certificate by CKA_ID, so an entry under `label` holding the
        // expected certificate is the key with that certificate's CKA_ID.
        List<String> candidates = new ArrayList<>();
        candidates.add(label);
        for (String alias : Collections.list(keyStore.aliases())) {
            if (!alias.equals(label)) {
                candidates.add(alias); // labels are not unique on every token
            }
        }
        for (String alias : candidates) {
            if (!keyStore.containsAlias(alias) || !keyStore.isKeyEntry(alias)) {
                continue;
            }
            Certificate cert = keyStore.getCertificate(alias);
            if (cert != null && cert.equals(expected)) {
                if (!alias.equals(label)) {
                    System.err.println("p11tls: certificate found under alias " + alias
                            + ", not under label " + label);
                }
                PrivateKey key = (PrivateKey) keyStore.getKey(alias, null);
                return new SelectedKey(alias, key, new X509Certificate[] {expected});
            }
        }
        return null;
    }

    private SSLContext contextFor(SelectedKey key, Path caPem) throws Exception {
        byte[] caBytes = Files.readAllBytes(caPem);
        String cacheKey = key.alias + "\0" + hex(
                MessageDigest.getInstance("SHA-256").digest(caBytes));
        SSLContext context = contexts.get(cacheKey);
        if (context != null) {
            return context;
        }
        KeyStore trust = KeyStore.getInstance("PKCS12");
        trust.load(null, null);
        int i = 0;
        for (X509Certificate ca : readCerts(caPem)) {
            trust.setCertificateEntry("ca" + i++, ca);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX");
        tmf.init(trust);
        context = SSLContext.getInstance("TLS", "SunJSSE");
        context.init(new KeyManager[] {new OneKeyManager(key)}, tmf.getTrustManagers(), null);
        contexts.put(cacheKey, context);
        return context;
    }

    // -- helpers -----------------------------------------------------------------

    // A plain class, not a record: the client compiles for Java 11 (--release 11).
    private static final class SelectedKey {
        final String alias;
        final PrivateKey key;
        final X509Certificate[] chain;

        SelectedKey(String alias, PrivateKey key, X509Certificate[] chain) {
            this.alias = alias;
            this.key = key;
            this.chain = chain;
        }
    }

    private static String hex(byte[] bytes) {
        StringBuilder text = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) {
            text.append(String.format("%02x", b & 0xff));
        }
        return text.toString();
    }

    /** Offers exactly one key, whatever else is on the token. */
    private static final class OneKeyManager extends X509ExtendedKeyManager {
        private final SelectedKey key;

        OneKeyManager(SelectedKey key) {
            this.key = key;
        }

        private String pick(String[] keyTypes) {
            if (keyTypes == null) {
                return null;
            }
            for (String type : keyTypes) {
                if (key.key.getAlgorithm().equals(type)) {
                    return key.alias;
                }
            }
            return null;
        }

        @Override
        public String chooseClientAlias(String[] keyTypes, Principal[] issuers, Socket s) {
            // issuers are ignored on purpose: a certificate the server does not
            // trust is sent anyway, and the server's rejection is the observation.
            return pick(keyTypes);
        }

        @Override
        public String chooseEngineClientAlias(String[] keyTypes, Principal[] issuers,
                SSLEngine engine) {
            return pick(keyTypes);
        }

        @Override
        public String[] getClientAliases(String keyType, Principal[] issuers) {
            String alias = pick(new String[] {keyType});
            return alias == null ? null : new String[] {alias};
        }

        @Override
        public PrivateKey getPrivateKey(String alias) {
            return key.alias.equals(alias) ? key.key : null;
        }

        @Override
        public X509Certificate[] getCertificateChain(String alias) {
            return key.alias.equals(alias) ? key.chain.clone() : null;
        }

        @Override
        public String chooseServerAlias(String keyType, Principal[] issuers, Socket s) {
            return null;
        }

        @Override
        public String[] getServerAliases(String keyType, Principal[] issuers) {
            return null;
        }
    }

    private static List<X509Certificate> readCerts(Path pem) throws Exception {
        try (InputStream in = new FileInputStream(pem.toFile())) {
            Collection<? extends Certificate> certs =
                    CertificateFactory.getInstance("X.509").generateCertificates(in);
            List<X509Certificate> out = new ArrayList<>();
            for (Certificate c : certs) {
                out.add((X509Certificate) c);
            }
            if (out.isEmpty()) {
                throw new IllegalArgumentException("no certificate in " + pem);
            }
            return out;
        }
    }

    private static String fingerprint(X509Certificate cert) throws Exception {
        return hex(
                MessageDigest.getInstance("SHA-256").digest(cert.getEncoded()));
    }

    private static PrintStream openCaseLog(String path) {
        if (path == null || path.isEmpty()) {
            return null;
        }
        try {
            OutputStream out = new FileOutputStream(path, true);
            return new PrintStream(out, true, StandardCharsets.UTF_8);
        } catch (IOException e) {
            e.printStackTrace();
            return null;
        }
    }

    private static boolean hasCause(Throwable e, Class<? extends Throwable> type) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (type.isInstance(t)) {
                return true;
            }
        }
        return false;
    }

    /**
     * The PKCS#11 return code in an exception chain. PKCS11Exception is not an
     * exported class, so it is recognised by name and its message (the CKR name).
     */
    static String ckrOf(Throwable e) {
        String fallback = "";
        for (Throwable t = e; t != null; t = t.getCause()) {
            String message = String.valueOf(t.getMessage());
            Matcher m = CKR.matcher(message);
            if (t.getClass().getName().endsWith(".PKCS11Exception")) {
                return m.find() ? m.group() : "CKR_" + message.trim();
            }
            if (fallback.isEmpty() && m.find()) {
                fallback = m.group();
            }
        }
        return fallback;
    }

    /** One line: each exception in the chain as "Class: message", joined by " <- ". */
    static String chainSummary(Throwable e) {
        StringBuilder sb = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (sb.length() > 0) {
                sb.append(" <- ");
            }
            sb.append(t.getClass().getName());
            if (t.getMessage() != null) {
                sb.append(": ").append(t.getMessage().replaceAll("\\s+", " ").trim());
            }
        }
        return sb.toString();
    }

    static Map<String, String> parse(String line) {
        Map<String, String> out = new LinkedHashMap<>();
        String[] words = line.trim().split(" ");
        out.put("", words[0]);
        for (int i = 1; i < words.length; i++) {
            int eq = words[i].indexOf('=');
            if (eq > 0) {
                out.put(words[i].substring(0, eq),
                        URLDecoder.decode(words[i].substring(eq + 1), StandardCharsets.UTF_8));
            }
        }
        return out;
    }

    private static void reply(PrintStream protocol, String... verbAndPairs) {
        StringBuilder sb = new StringBuilder(verbAndPairs[0]);
        for (int i = 1; i + 1 < verbAndPairs.length; i += 2) {
            sb.append(' ').append(verbAndPairs[i]).append('=')
                    .append(URLEncoder.encode(verbAndPairs[i + 1], StandardCharsets.UTF_8));
        }
        protocol.println(sb);
        protocol.flush();
    }
}
