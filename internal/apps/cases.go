package apps

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/patu-dev/patu/internal/testnet"
)

// Cases returns the suite's cases, sized by r's Scale.
func (r *Runner) Cases() []Case {
	return []Case{
		r.haproxyCase(),
		r.nginxCase("nginx-sendfile", true),
		r.nginxCase("nginx-wget", false),
		r.ncMD5Case(),
		r.ncNullCase(),
		r.socatCase(),
		r.pythonCase(),
		r.javaCase(),
		r.postgresCase(),
		r.redisCase(),
		r.memcachedCase(),
		r.goStreamCase("go-stream", 0),
		r.goStreamCase("go-stream-capped", 300),
		r.goStalledCase(),
		r.goProxyCase(),
	}
}

func sizeName(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20:
		return fmt.Sprintf("%d MiB", n>>20)
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}

// md5Lines checks that out has n lines, each the md5sum of want, and
// returns the digest "n×want".
func md5Lines(out string, n int, want string) (string, error) {
	lines := strings.Fields(strings.ReplaceAll(out, "-", ""))
	bad := 0
	for _, l := range lines {
		if l != want {
			bad++
		}
	}
	d := fmt.Sprintf("%d×%s", len(lines)-bad, want)
	if bad > 0 || len(lines) != n {
		return d + fmt.Sprintf(" (+%d wrong)", bad), fmt.Errorf("%d of %d transfers intact (md5 %s expected, got %q)", len(lines)-bad, n, want, strings.TrimSpace(out))
	}
	return d, nil
}

// nginxConf is an nginx configuration serving root on addr:port with
// sendfile on or off, everything it writes in dir.
func nginxConf(dir, root, addr string, port int, sendfile bool) string {
	sf := "off"
	if sendfile {
		sf = "on"
	}
	return fmt.Sprintf(`worker_processes 1;
daemon off;
user root root;
pid %[1]s/nginx.pid;
error_log stderr warn;
events { worker_connections 512; }
http {
	access_log off;
	sendfile %[5]s;
	default_type application/octet-stream;
	client_body_temp_path %[1]s/client;
	proxy_temp_path %[1]s/proxy;
	fastcgi_temp_path %[1]s/fastcgi;
	uwsgi_temp_path %[1]s/uwsgi;
	scgi_temp_path %[1]s/scgi;
	server {
		listen %[3]s:%[4]d;
		root %[2]s;
	}
}
`, dir, root, addr, port, sf)
}

// startNginx starts nginx in pod p serving the runner's data directory.
func (e *Env) startNginx(ctx context.Context, p int, port int, sendfile bool) error {
	conf, err := writeFile(e.Dir, fmt.Sprintf("nginx-%d.conf", port), nginxConf(e.Dir, e.r.dataDir(), e.Pods[p].IPv4.String(), port, sendfile))
	if err != nil {
		return err
	}
	pr, err := e.Start(e.Pods[p], "nginx", "-e", "stderr", "-p", e.Dir, "-c", conf)
	if err != nil {
		return err
	}
	return e.Listen(ctx, pr, port)
}

func (r *Runner) haproxyCase() Case {
	const full, n = 20 << 20, 10
	size := r.size(full)
	data := func() (string, string, error) { return r.dataFile("haproxy", size) }
	return Case{
		Name:    "haproxy",
		Prepare: func(context.Context) error { _, _, err := data(); return err },
		Desc:    fmt.Sprintf("HAProxy 2.6 (mode http, option splice-auto, splice-response) in front of nginx in a third pod; curl fetches %s ×%d", sizeName(size), n),
		Pods:    3,
		Tools:   []string{"haproxy", "nginx", "curl", "bash"},
		Timeout: 3 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			file, sum, err := data()
			if err != nil {
				return Observed{}, err
			}
			if err := e.startNginx(ctx, 2, 8081, true); err != nil {
				return Observed{}, err
			}
			cfg := fmt.Sprintf(`global
	maxconn 200
defaults
	mode http
	timeout connect 5s
	timeout client 120s
	timeout server 120s
	option splice-auto
	option splice-response
frontend fe
	bind %s:8080
	default_backend be
backend be
	server nginx %s:8081
`, e.Pods[1].IPv4, e.To(2))
			conf, err := writeFile(e.Dir, "haproxy.cfg", cfg)
			if err != nil {
				return Observed{}, err
			}
			hp, err := e.Start(e.Pods[1], "haproxy", "-db", "-f", conf)
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, hp, 8080); err != nil {
				return Observed{}, err
			}
			out, err := e.Run(ctx, e.Pods[0], "bash", "-c", fmt.Sprintf(
				"set -o pipefail; for i in $(seq %d); do curl -sS --fail -o - http://%s:8080/%s | md5sum || exit 1; done",
				n, e.To(1), baseName(file)))
			d, cerr := md5Lines(out, n, sum)
			if err == nil {
				err = cerr
			}
			return Observed{Digest: d, Payload: size * n}, err
		},
	}
}

func (r *Runner) nginxCase(name string, sendfile bool) Case {
	const full, n = 50 << 20, 5
	size := r.size(full)
	client, desc := "curl -sS --fail -o -", "nginx 1.22 with sendfile on; curl"
	if !sendfile {
		client, desc = "wget -q -O -", "nginx 1.22 with sendfile off; wget"
	}
	data := func() (string, string, error) { return r.dataFile("nginx", size) }
	return Case{
		Name:    name,
		Prepare: func(context.Context) error { _, _, err := data(); return err },
		Desc:    fmt.Sprintf("%s fetches %s ×%d", desc, sizeName(size), n),
		Pods:    2,
		Tools:   []string{"nginx", strings.Fields(client)[0], "bash"},
		Timeout: 3 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			file, sum, err := data()
			if err != nil {
				return Observed{}, err
			}
			if err := e.startNginx(ctx, 1, 8081, sendfile); err != nil {
				return Observed{}, err
			}
			out, err := e.Run(ctx, e.Pods[0], "bash", "-c", fmt.Sprintf(
				"set -o pipefail; for i in $(seq %d); do %s http://%s:8081/%s | md5sum || exit 1; done",
				n, client, e.To(1), baseName(file)))
			d, cerr := md5Lines(out, n, sum)
			if err == nil {
				err = cerr
			}
			return Observed{Digest: d, Payload: size * n}, err
		},
	}
}

func (r *Runner) ncMD5Case() Case {
	size := r.size(200 << 20)
	data := func() (string, string, error) { return r.dataFile("nc", size) }
	return Case{
		Name:    "nc-md5",
		Prepare: func(context.Context) error { _, _, err := data(); return err },
		Desc:    fmt.Sprintf("openbsd nc streams %s into nc -l | md5sum", sizeName(size)),
		Pods:    2,
		Tools:   []string{"nc", "md5sum"},
		Timeout: 2 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			file, sum, err := data()
			if err != nil {
				return Observed{}, err
			}
			srv, err := e.Sh(e.Pods[1], fmt.Sprintf("nc -l %s 9000 | md5sum", e.Pods[1].IPv4))
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, srv, 9000); err != nil {
				return Observed{}, err
			}
			if _, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf("nc -N %s 9000 < %s", e.To(1), file)); err != nil {
				return Observed{}, err
			}
			out, err := srv.Wait(ctx)
			d, cerr := md5Lines(out, 1, sum)
			if err == nil {
				err = cerr
			}
			return Observed{Digest: d, Payload: size}, err
		},
	}
}

func (r *Runner) ncNullCase() Case {
	size := r.size(1 << 30)
	return Case{
		Name:    "nc-null",
		Desc:    fmt.Sprintf("openbsd nc streams %s of zeros into nc -l > /dev/null", sizeName(size)),
		Pods:    2,
		Tools:   []string{"nc", "head"},
		Timeout: 2 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			srv, err := e.Sh(e.Pods[1], fmt.Sprintf("nc -l %s 9001 > /dev/null", e.Pods[1].IPv4))
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, srv, 9001); err != nil {
				return Observed{}, err
			}
			// nc exits 0 only once it wrote everything to the socket.
			out, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf("head -c %d /dev/zero | nc -N %s 9001 && echo sent %d", size, e.To(1), size))
			if err != nil {
				return Observed{}, err
			}
			if _, err := srv.Wait(ctx); err != nil {
				return Observed{}, err
			}
			return Observed{Digest: strings.TrimSpace(out) + ", receiver exited 0", Payload: size}, nil
		},
	}
}

func (r *Runner) socatCase() Case {
	size := r.size(200 << 20)
	back := r.size(50 << 20)
	up := func() (string, string, error) { return r.dataFile("socat-up", size) }
	down := func() (string, string, error) { return r.dataFile("socat-down", back) }
	return Case{
		Name:    "socat",
		Prepare: func(context.Context) error { return prepare(up, down) },
		Desc:    fmt.Sprintf("socat relays between socat client and server: %s one way, %s back at once", sizeName(size), sizeName(back)),
		Pods:    3,
		Tools:   []string{"socat", "md5sum"},
		Timeout: 2 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			f1, s1, err := up()
			if err != nil {
				return Observed{}, err
			}
			f2, s2, err := down()
			if err != nil {
				return Observed{}, err
			}
			be, err := e.backend(e.Pods[2], 9003, f2)
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, be.Proc, 9003); err != nil {
				return Observed{}, err
			}
			relay, err := e.Start(e.Pods[1], "socat", "-t", halfClose, fmt.Sprintf("TCP-LISTEN:9002,bind=%s,reuseaddr", e.Pods[1].IPv4),
				fmt.Sprintf("TCP:%s:9003", e.To(2)))
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, relay, 9002); err != nil {
				return Observed{}, err
			}
			got, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf("socat -t %s - TCP:%s:9002 < %s | md5sum", halfClose, e.To(1), f1))
			if err != nil {
				return Observed{}, err
			}
			up, err := be.wait(ctx)
			if err != nil {
				return Observed{}, err
			}
			if _, err := relay.Wait(ctx); err != nil {
				return Observed{}, err
			}
			d1, err1 := md5Lines(up, 1, s1)
			d2, err2 := md5Lines(got, 1, s2)
			if err1 != nil {
				return Observed{Digest: d1 + " " + d2}, err1
			}
			return Observed{Digest: d1 + " " + d2, Payload: size + back}, err2
		},
	}
}

func (r *Runner) pythonCase() Case {
	const conns = 20
	each := r.size(8 << 20)
	return Case{
		Name:    "python",
		Desc:    fmt.Sprintf("Python 3 blocking sockets, a reader and a writer thread per connection, %s each way, %d connections (IPv6)", sizeName(each), conns),
		Pods:    2,
		Tools:   []string{"python3"},
		Timeout: 3 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			script, err := writeFile(e.Dir, "duplex.py", duplexPy)
			if err != nil {
				return Observed{}, err
			}
			return e.duplex(ctx, duplexRun{prog: "python3", args: []string{script}, bind: e.Pods[1].IPv6, dial: e.To6(1), port: 9006, conns: conns, each: each})
		},
	}
}

func (r *Runner) javaCase() Case {
	const conns = 4
	each := r.size(64 << 20)
	return Case{
		Name:    "java",
		Desc:    fmt.Sprintf("Java 17 classic blocking Socket streams, %s each way, %d connections", sizeName(each), conns),
		Pods:    2,
		Tools:   []string{"java"},
		Timeout: 3 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			src, err := writeFile(e.Dir, "BlockingStreams.java", blockingStreamsJava)
			if err != nil {
				return Observed{}, err
			}
			// Start-up matters more than peak speed here.
			return e.duplex(ctx, duplexRun{prog: "java", args: []string{"-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k", src},
				bind: e.Pods[1].IPv4, dial: e.To(1), port: 9007, conns: conns, each: each})
		},
	}
}

// duplexRun is a program that takes "server|client ADDR PORT CONNS BYTES"
// after its own arguments, moves BYTES each way on CONNS connections and
// prints a last line saying how many were intact (duplex.py,
// BlockingStreams.java).
type duplexRun struct {
	prog        string
	args        []string
	bind, dial  netip.Addr // the server's address, and the one its client dials
	port, conns int
	each        int64
}

// duplex runs d's server in pod 1 and its client in pod 0.
func (e *Env) duplex(ctx context.Context, d duplexRun) (Observed, error) {
	args := func(mode string, addr netip.Addr) []string {
		return append(slices.Clone(d.args), mode, addr.String(), fmt.Sprint(d.port), fmt.Sprint(d.conns), fmt.Sprint(d.each))
	}
	srv, err := e.Start(e.Pods[1], d.prog, args("server", d.bind)...)
	if err != nil {
		return Observed{}, err
	}
	if err := e.Listen(ctx, srv, d.port); err != nil {
		return Observed{}, err
	}
	out, err := e.Run(ctx, e.Pods[0], d.prog, args("client", d.dial)...)
	if err != nil {
		return Observed{Digest: lastLine(out)}, err
	}
	sout, err := srv.Wait(ctx)
	if err != nil {
		return Observed{Digest: lastLine(out)}, err
	}
	return Observed{Digest: lastLine(out) + "; server: " + lastLine(sout), Payload: 2 * int64(d.conns) * d.each}, nil
}

func (r *Runner) redisCase() Case {
	requests := r.count(100000, 5000)
	keys := r.count(8000, 1000)
	const valueLen = 4096
	data := func() (string, string, error) {
		return r.textFile("redis-values", keys, func(i int, rng *rand.Rand) string { return hexString(rng, valueLen) + "\n" })
	}
	return Case{
		Name:    "redis",
		Prepare: func(context.Context) error { _, _, err := data(); return err },
		Desc:    fmt.Sprintf("redis 7: redis-benchmark (20 clients, 256 B, %d requests per test), then %d values of %d B written with redis-cli --pipe and read back", requests, keys, valueLen),
		Pods:    2,
		Tools:   []string{"redis-server", "redis-benchmark", "redis-cli"},
		Timeout: 2 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			values, sum, err := data()
			if err != nil {
				return Observed{}, err
			}
			b := e.Pods[1].IPv4.String()
			srv, err := e.Start(e.Pods[1], "redis-server", "--bind", b, "--port", "6379", "--save", "", "--appendonly", "no",
				"--protected-mode", "no", "--daemonize", "no", "--dir", e.Dir)
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, srv, 6379); err != nil {
				return Observed{}, err
			}
			to := e.To(1).String()
			out, err := e.Run(ctx, e.Pods[0], "redis-benchmark", "-h", to, "-p", "6379", "-c", "20", "-n", fmt.Sprint(requests),
				"-d", "256", "-t", "set,get,incr,lpush,lpop", "-q")
			if err != nil {
				return Observed{}, err
			}
			tests := strings.Count(out, "requests per second")
			if tests != 5 || strings.Contains(strings.ToLower(out), "error") {
				return Observed{}, fmt.Errorf("redis-benchmark: %d of 5 tests reported: %s", tests, tail(out))
			}
			// SET key:i <value> in RESP, for --pipe; GET key:i for the read.
			load, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf(
				`awk '{printf "*3\r\n$3\r\nSET\r\n$%%d\r\nkey:%%d\r\n$%%d\r\n%%s\r\n", length("key:" NR-1), NR-1, length($0), $0}' %s | redis-cli -h %s --pipe`,
				values, to))
			if err != nil {
				return Observed{}, err
			}
			if !strings.Contains(load, "errors: 0, replies: "+fmt.Sprint(keys)) {
				return Observed{}, fmt.Errorf("redis-cli --pipe: %s", tail(load))
			}
			got, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf(`seq 0 %d | sed 's/^/GET key:/' | redis-cli -h %s --raw | md5sum`, keys-1, to))
			if err != nil {
				return Observed{}, err
			}
			d, err := md5Lines(got, 1, sum)
			return Observed{Digest: "benchmark: 5 tests; values " + d, Payload: int64(keys) * valueLen * 2}, err
		},
	}
}

func (r *Runner) memcachedCase() Case {
	files := r.count(400, 40)
	const each = 256 << 10
	var names []string
	var expect string
	return Case{
		Name:    "memcached",
		Desc:    fmt.Sprintf("memcached: memccp stores %d files of 256 KiB, memccat reads them back", files),
		Pods:    2,
		Tools:   []string{"memcached", "memccp", "memccat"},
		Timeout: 2 * time.Minute,
		Prepare: func(context.Context) error {
			if names != nil {
				return nil
			}
			// memccat prints each value and a newline.
			h := md5.New()
			for i := range files {
				p, _, err := r.dataFile(fmt.Sprintf("mc%03d", i), each)
				if err != nil {
					return err
				}
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				h.Write(b)
				h.Write([]byte("\n"))
				names = append(names, p)
			}
			expect = hex.EncodeToString(h.Sum(nil))
			return nil
		},
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			b := e.Pods[1].IPv4.String()
			srv, err := e.Start(e.Pods[1], "memcached", "-u", "root", "-l", b, "-p", "11211", "-m", "512", "-t", "2")
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, srv, 11211); err != nil {
				return Observed{}, err
			}
			servers := "--servers=" + e.To(1).String() + ":11211"
			if _, err := e.Run(ctx, e.Pods[0], "memccp", append([]string{servers}, names...)...); err != nil {
				return Observed{}, err
			}
			var keys []string
			for _, n := range names {
				keys = append(keys, baseName(n))
			}
			got, err := e.RunSh(ctx, e.Pods[0], "memccat "+servers+" "+strings.Join(keys, " ")+" | md5sum")
			if err != nil {
				return Observed{}, err
			}
			d, err := md5Lines(got, 1, expect)
			return Observed{Digest: d, Payload: int64(files) * each * 2}, err
		},
	}
}

// prepare makes the data files of a case.
func prepare(files ...func() (string, string, error)) error {
	for _, f := range files {
		if _, _, err := f(); err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) goStreamCase(name string, rate int) Case {
	size := r.size(2 << 30)
	desc := "a Go sender writes 64 KiB chunks of a pattern, a Go receiver checks every byte as it reads"
	if rate > 0 {
		size = r.size(1 << 30)
		desc += fmt.Sprintf(", reading at most %d MB/s (a reader that does work)", rate)
	}
	return Case{
		Name:    name,
		Desc:    fmt.Sprintf("%s: %s", desc, sizeName(size)),
		Pods:    2,
		Tools:   nil,
		Timeout: 3 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			addr := netip.AddrPortFrom(e.Pods[1].IPv4, 9008).String()
			args := []string{"serve", "--listen", addr, "--mode", "sink", "--conns", "1"}
			if rate > 0 {
				args = append(args, "--read-rate", fmt.Sprint(rate))
			}
			srv, err := e.Start(e.Pods[1], r.peerBin, args...)
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, srv, 9008); err != nil {
				return Observed{}, err
			}
			res, err := e.peer(ctx, e.Pods[0], "--connect", netip.AddrPortFrom(e.To(1), 9008).String(), "--mode", "stream", "--bytes", fmt.Sprint(size))
			if err != nil {
				return Observed{}, err
			}
			if _, err := srv.Wait(ctx); err != nil {
				return Observed{}, err
			}
			return Observed{Digest: fmt.Sprintf("%d of %d connections intact, %d bytes verified", res.OK, res.Conns, res.Bytes),
				Payload: res.Bytes}, nil
		},
	}
}

// goStalledCase is a reader that stops reading and is then killed: the
// writer, blocked on a full window, must get the error it gets on the
// bridge path, and nothing may be left of the connection.
func (r *Runner) goStalledCase() Case {
	return Case{
		Name:    "go-stalled-killed",
		NoBench: true,
		Desc:    "a Go receiver stalls after accepting, the Go sender fills the path and blocks, then the receiver is killed",
		Pods:    2,
		Timeout: time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			addr := netip.AddrPortFrom(e.Pods[1].IPv4, 9009).String()
			srv, err := e.Start(e.Pods[1], r.peerBin, "serve", "--listen", addr, "--mode", "stall", "--stall", "10m", "--conns", "1")
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, srv, 9009); err != nil {
				return Observed{}, err
			}
			cl, err := e.Start(e.Pods[0], r.peerBin, "client", "--connect", netip.AddrPortFrom(e.To(1), 9009).String(), "--mode", "stream", "--bytes", fmt.Sprint(1<<30))
			if err != nil {
				return Observed{}, err
			}
			// Long enough for the writer to fill both socket buffers and
			// block, on any path.
			select {
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
				return Observed{}, ctx.Err()
			}
			if cl.Exited() {
				out, err := cl.Wait(ctx)
				return Observed{}, fmt.Errorf("the sender ended while the reader stalled: %v: %s", err, tail(out))
			}
			srv.Signal(9)
			srv.Wait(ctx)
			out, err := cl.Wait(ctx)
			res, perr := parsePeer(out)
			if perr != nil {
				return Observed{}, fmt.Errorf("sender: %v (%v)", perr, err)
			}
			if err == nil || res.Failed != 1 {
				return Observed{}, fmt.Errorf("the sender did not fail when its reader was killed: %+v", res)
			}
			return Observed{Digest: "sender failed: " + errorKind(res.Errors), Payload: 0}, nil
		},
	}
}

func (r *Runner) goProxyCase() Case {
	up := r.size(200 << 20)
	down := r.size(200 << 20)
	upData := func() (string, string, error) { return r.dataFile("proxy-up", up) }
	downData := func() (string, string, error) { return r.dataFile("proxy-down", down) }
	return Case{
		Name:    "goproxy",
		Prepare: func(context.Context) error { return prepare(upData, downData) },
		Desc:    fmt.Sprintf("a Go proxy reads a header line, then io.Copy (splice) between two TCPConns; socat client and server, %s each way at once", sizeName(up)),
		Pods:    3,
		Tools:   []string{"nc", "md5sum"},
		Timeout: 2 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			f1, s1, err := upData()
			if err != nil {
				return Observed{}, err
			}
			f2, s2, err := downData()
			if err != nil {
				return Observed{}, err
			}
			be, err := e.backend(e.Pods[2], 9011, f2)
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, be.Proc, 9011); err != nil {
				return Observed{}, err
			}
			px, err := e.Start(e.Pods[1], r.proxyBin, "-listen", netip.AddrPortFrom(e.Pods[1].IPv4, 9010).String())
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, px, 9010); err != nil {
				return Observed{}, err
			}
			got, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf("{ echo %s:9011; cat %s; } | socat -t %s - TCP:%s:9010 | md5sum",
				e.To(2), f1, halfClose, e.To(1)))
			if err != nil {
				return Observed{}, err
			}
			back, err := be.wait(ctx)
			if err != nil {
				return Observed{}, err
			}
			d1, err1 := md5Lines(back, 1, s1)
			d2, err2 := md5Lines(got, 1, s2)
			if err1 != nil {
				return Observed{Digest: d1 + " " + d2}, err1
			}
			return Observed{Digest: d1 + " " + d2, Payload: up + down}, err2
		},
	}
}

func baseName(p string) string {
	return p[strings.LastIndexByte(p, '/')+1:]
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// halfClose is socat's -t: how long it keeps the other direction going
// after one ended. Its default (0.5 s) cuts a slower direction short, and
// openbsd nc -l stops sending at the network's EOF: both would truncate a
// transfer whose directions end at different times, on any path.
const halfClose = "600"

// backendProc is a socat server that sends a file and checksums what it
// receives, both directions at once.
type backendProc struct {
	*Proc
	sumFile string
}

// backend starts a backendProc in pod p on port that sends file.
func (e *Env) backend(p *testnet.Pod, port int, file string) (*backendProc, error) {
	sum := filepath.Join(e.Dir, fmt.Sprintf("received-%d.md5", port))
	pr, err := e.Start(p, "socat", "-t", halfClose, fmt.Sprintf("TCP-LISTEN:%d,bind=%s,reuseaddr", port, p.IPv4),
		fmt.Sprintf("SYSTEM:cat %s & md5sum > %s; wait", file, sum))
	if err != nil {
		return nil, err
	}
	return &backendProc{Proc: pr, sumFile: sum}, nil
}

// wait waits for the backend to exit and returns the checksum of what it
// received, as md5sum prints it.
func (b *backendProc) wait(ctx context.Context) (string, error) {
	if _, err := b.Wait(ctx); err != nil {
		return "", err
	}
	out, err := os.ReadFile(b.sumFile)
	return string(out), err
}
