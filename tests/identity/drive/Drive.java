import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;

/**
 * Fetch a URL through an HTTP proxy with the JDK's built-in Negotiate (Kerberos) support.
 * Usage: java [props] Drive PROXYHOST PROXYPORT URL
 * Props needed: java.security.krb5.conf, java.security.auth.login.config,
 * javax.security.auth.useSubjectCredsOnly=false, (optionally) jdk.net.hosts.file.
 */
public class Drive {
    public static void main(String[] args) throws Exception {
        String ph = args[0];
        int pp = Integer.parseInt(args[1]);
        URL url = new URL(args[2]);
        Proxy proxy = new Proxy(Proxy.Type.HTTP, InetSocketAddress.createUnresolved(ph, pp));
        HttpURLConnection c = (HttpURLConnection) url.openConnection(proxy);
        c.setConnectTimeout(10000);
        c.setReadTimeout(10000);
        int code = c.getResponseCode();
        System.out.println("status: " + code + " " + c.getResponseMessage());
        String pa = c.getHeaderField("Proxy-Authenticate");
        if (pa != null) System.out.println("Proxy-Authenticate: " + pa);
        InputStream in = code >= 400 ? c.getErrorStream() : c.getInputStream();
        String body = in == null ? "" : new String(in.readAllBytes(), StandardCharsets.UTF_8);
        System.out.println("body: " + body.trim());
    }
}
