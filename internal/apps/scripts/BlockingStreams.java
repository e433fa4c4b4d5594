// Classic blocking java.net.Socket streams, as most Java servers and
// clients before NIO are written.
//
//   java BlockingStreams.java server|client ADDR PORT CONNS BYTES
//
// Each connection moves BYTES each way at once: a thread writes through
// the socket's OutputStream, another reads its InputStream until EOF. The
// client first sends the connection's index, so both ends know the
// pattern the other sends; each checks the md5 of what it read. Any
// failure exits 1.
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ConcurrentLinkedQueue;

public class BlockingStreams {
    static final int BLOCK = 1 << 20;
    static final ConcurrentLinkedQueue<String> errors = new ConcurrentLinkedQueue<>();

    static byte[] pattern(long seed) {
        byte[] b = new byte[BLOCK];
        new Random(seed).nextBytes(b);
        return b;
    }

    static String expected(long seed, long n) throws Exception {
        byte[] b = pattern(seed);
        MessageDigest md = MessageDigest.getInstance("MD5");
        for (long left = n; left > 0; left -= BLOCK) {
            md.update(b, 0, (int) Math.min(left, BLOCK));
        }
        return HexFormat.of().formatHex(md.digest());
    }

    static void write(Socket s, long seed, long n) throws Exception {
        byte[] b = pattern(seed);
        OutputStream out = s.getOutputStream();
        for (long left = n; left > 0; left -= BLOCK) {
            int len = (int) Math.min(left, BLOCK);
            for (int off = 0; off < len; off += 65536) {
                out.write(b, off, Math.min(65536, len - off));
            }
        }
        out.flush();
        s.shutdownOutput();
    }

    static void read(Socket s, long seed, long n, String who) throws Exception {
        InputStream in = s.getInputStream();
        MessageDigest md = MessageDigest.getInstance("MD5");
        byte[] buf = new byte[65536];
        long got = 0;
        for (int r; (r = in.read(buf)) >= 0; ) {
            md.update(buf, 0, r);
            got += r;
        }
        String sum = HexFormat.of().formatHex(md.digest());
        String want = expected(seed, n);
        if (got != n || !sum.equals(want)) {
            throw new Exception(who + ": read " + got + " bytes md5 " + sum + ", want " + n + " md5 " + want);
        }
    }

    static void duplex(Socket s, long sendSeed, long recvSeed, long n, String who) throws Exception {
        Thread w = new Thread(() -> {
            try {
                write(s, sendSeed, n);
            } catch (Exception e) {
                errors.add(who + " writer: " + e);
            }
        });
        w.start();
        try {
            read(s, recvSeed, n, who + " reader");
        } catch (Exception e) {
            errors.add(who + " reader: " + e);
        }
        w.join();
        s.close();
    }

    public static void main(String[] a) throws Exception {
        String mode = a[0];
        InetAddress addr = InetAddress.getByName(a[1]);
        int port = Integer.parseInt(a[2]);
        int conns = Integer.parseInt(a[3]);
        long n = Long.parseLong(a[4]);
        List<Thread> threads = new ArrayList<>();
        if (mode.equals("server")) {
            try (ServerSocket ls = new ServerSocket(port, conns, addr)) {
                for (int i = 0; i < conns; i++) {
                    Socket s = ls.accept();
                    Thread t = new Thread(() -> {
                        try {
                            int id = new DataInputStream(s.getInputStream()).readInt();
                            duplex(s, 2L * id + 1, 2L * id, n, "connection " + id);
                        } catch (Exception e) {
                            errors.add("server: " + e);
                        }
                    });
                    t.start();
                    threads.add(t);
                }
            }
        } else {
            for (int i = 0; i < conns; i++) {
                final int id = i;
                Thread t = new Thread(() -> {
                    try {
                        Socket s = new Socket(addr, port);
                        new DataOutputStream(s.getOutputStream()).writeInt(id);
                        duplex(s, 2L * id, 2L * id + 1, n, "connection " + id);
                    } catch (Exception e) {
                        errors.add("client: " + e);
                    }
                });
                t.start();
                threads.add(t);
            }
        }
        for (Thread t : threads) {
            t.join();
        }
        for (String e : errors) {
            System.err.println(e);
        }
        System.out.println(errors.isEmpty() ? conns + " of " + conns + " connections intact, " + n + " bytes each way"
                : errors.size() + " errors in " + conns + " connections");
        System.exit(errors.isEmpty() ? 0 : 1);
    }
}
