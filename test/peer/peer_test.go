package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The tests run server and client in-process on 127.0.0.1: no privileges.

type server struct {
	addr   string
	done   chan int
	stdout *bytes.Buffer
	stderr *bytes.Buffer
}

// serve starts `serve` with args and waits for its ready file.
func serve(t *testing.T, args ...string) *server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := filepath.Join(t.TempDir(), "ready")
	s := &server{done: make(chan int, 1), stdout: new(bytes.Buffer), stderr: new(bytes.Buffer)}
	args = append([]string{"serve", "--listen", "127.0.0.1:0", "--ready-file", ready}, args...)
	go func() { s.done <- run(ctx, args, s.stdout, s.stderr) }()
	t.Cleanup(func() {
		cancel()
		<-s.done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(ready)
		if err == nil {
			s.addr = strings.TrimSpace(string(b))
			return s
		}
		select {
		case code := <-s.done:
			t.Fatalf("server exited with %d before listening: %s", code, s.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("server not ready after 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// wait returns the server's result once it exited (it was started with
// --conns).
func (s *server) wait(t *testing.T) (int, result) {
	t.Helper()
	select {
	case code := <-s.done:
		s.done <- code // for the cleanup
		return code, parse(t, s.stdout.String())
	case <-time.After(30 * time.Second):
		t.Fatal("server did not exit after its connections")
	}
	panic("unreachable")
}

func parse(t *testing.T, out string) result {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var r result
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("result line %q: %v", out, err)
	}
	return r
}

func clientRun(t *testing.T, args ...string) (int, result, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := run(ctx, append([]string{"client"}, args...), &stdout, &stderr)
	return code, parse(t, stdout.String()), stderr.String()
}

func requireOK(t *testing.T, who string, code int, r result, conns int) {
	t.Helper()
	if code != 0 || r.Failed != 0 || r.OK != conns || r.Conns != conns {
		t.Fatalf("%s: exit %d, %+v", who, code, r)
	}
}

func TestEchoModes(t *testing.T) {
	for _, tc := range []struct {
		serve  []string
		client []string
	}{
		{[]string{"--mode", "echo"}, []string{"--mode", "echo", "--min", "0", "--max", "200000"}},
		{[]string{"--mode", "echo", "--slow"}, []string{"--mode", "echo", "--chunk-max", "3000", "--pause-max", "50us"}},
		{[]string{"--mode", "splice-echo"}, []string{"--mode", "echo", "--max", "300000"}},
		{[]string{"--mode", "sink"}, []string{"--mode", "echo", "--max", "300000"}},
		{[]string{"--mode", "sink"}, []string{"--mode", "sendfile", "--max", "1000000"}},
		{[]string{"--mode", "echo"}, []string{"--mode", "sendfile", "--max", "1000000"}},
		{[]string{"--mode", "splice-echo", "--mptcp"}, []string{"--mode", "echo", "--mptcp"}},
	} {
		t.Run(strings.Join(append(tc.serve, tc.client...), " "), func(t *testing.T) {
			const conns = 24
			s := serve(t, append(tc.serve, "--conns", fmt.Sprint(conns))...)
			code, r, stderr := clientRun(t, append(tc.client, "--connect", s.addr, "--conns", fmt.Sprint(conns),
				"--parallel", "4", "--seed", "7")...)
			requireOK(t, "client "+stderr, code, r, conns)
			if r.Bytes == 0 {
				t.Fatalf("client moved no bytes: %+v", r)
			}
			code, sr := s.wait(t)
			requireOK(t, "server", code, sr, conns)
		})
	}
}

func TestStream(t *testing.T) {
	for _, mode := range []string{"sink", "echo", "splice-echo"} {
		t.Run(mode, func(t *testing.T) {
			s := serve(t, "--mode", mode, "--conns", "2")
			code, r, _ := clientRun(t, "--connect", s.addr, "--mode", "stream", "--bytes", "8000000", "--seed", "3")
			requireOK(t, "client by bytes", code, r, 1)
			if r.Bytes != 8000000 {
				t.Fatalf("sent %d bytes, want 8000000", r.Bytes)
			}
			code, r, stderr := clientRun(t, "--connect", s.addr, "--mode", "stream", "--duration", "300ms", "--seed", "4")
			requireOK(t, "client by duration", code, r, 1)
			if !strings.Contains(stderr, "sent ") {
				t.Errorf("no progress on stderr: %q", stderr)
			}
			code, sr := s.wait(t)
			requireOK(t, "server", code, sr, 2)
		})
	}
}

func TestStall(t *testing.T) {
	s := serve(t, "--mode", "stall", "--stall", "1s", "--read-first", "65536", "--conns", "1")
	code, r, stderr := clientRun(t, "--connect", s.addr, "--mode", "stall-probe", "--probe", "400ms", "--report-queued")
	requireOK(t, "client "+stderr, code, r, 1)
	t.Logf("accepted %d, queued %v, unsent %v, total %d", r.AcceptedBytes, deref(r.QueuedBytes), deref(r.UnsentBytes), r.Bytes)
	// Loopback has backpressure: far below the 512 MiB cap.
	if r.AcceptedBytes < 65536 || r.AcceptedBytes > 64<<20 {
		t.Fatalf("accepted %d bytes", r.AcceptedBytes)
	}
	if r.QueuedBytes == nil || r.Bytes < r.AcceptedBytes {
		t.Fatalf("result %+v", r)
	}
	code, sr := s.wait(t)
	requireOK(t, "server", code, sr, 1)
}

func deref(p *int64) any {
	if p == nil {
		return nil
	}
	return *p
}

func TestRST(t *testing.T) {
	for _, rst := range []bool{false, true} {
		t.Run(fmt.Sprint("rst=", rst), func(t *testing.T) {
			args := []string{"--mode", "close-early", "--conns", "8"}
			if rst {
				args = append(args, "--rst")
			}
			s := serve(t, args...)
			code, r, _ := clientRun(t, "--connect", s.addr, "--mode", "rst", "--conns", "8", "--parallel", "4", "--timeout", "5s")
			requireOK(t, "client", code, r, 8)
			if r.ErrorKinds["timeout"] > 0 || r.ErrorKinds["none"] > 0 || len(r.ErrorKinds) == 0 {
				t.Fatalf("error kinds %v", r.ErrorKinds)
			}
			t.Logf("client ended with %v", r.ErrorKinds)
			code, sr := s.wait(t)
			requireOK(t, "server", code, sr, 8)
		})
	}
}

// TestDetectsCorruption: a server that changes one byte, drops a chunk or
// swaps two chunks of the echo makes the client fail.
func TestDetectsCorruption(t *testing.T) {
	for name, mangle := range map[string]func([]byte) []byte{
		"flip": func(b []byte) []byte { b[len(b)/2] ^= 0x40; return b },
		"drop": func(b []byte) []byte { return append(b[:1000:1000], b[2000:]...) },
		"swap": func(b []byte) []byte {
			a := append([]byte(nil), b[1000:2000]...)
			copy(b[1000:], b[3000:4000])
			copy(b[3000:], a)
			return b
		},
		"duplicate": func(b []byte) []byte { return append(b[:3000:3000], b[2000:]...) },
	} {
		t.Run(name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(mangle(b))
				c.(*net.TCPConn).CloseWrite()
			}()
			code, r, _ := clientRun(t, "--connect", ln.Addr().String(), "--mode", "echo", "--min", "5000", "--max", "5000")
			if code == 0 || r.Failed != 1 || len(r.Errors) == 0 {
				t.Fatalf("corruption not detected: exit %d, %+v", code, r)
			}
			t.Log(r.Errors[0])
		})
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		nil,
		{"bogus"},
		{"client"},
		{"client", "--connect", "x:1", "--mode", "nope"},
		{"client", "--connect", "x:1", "--min", "10", "--max", "5"},
		{"client", "--connect", "x:1", "--seed", "4294967296"},
		{"serve"},
		{"serve", "--listen", "127.0.0.1:0", "--mode", "nope"},
	} {
		if code := run(context.Background(), args, io.Discard, io.Discard); code != 2 {
			t.Errorf("%v: exit %d, want 2", args, code)
		}
	}
}

func TestConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, r, _ := clientRun(t, "--connect", addr, "--conns", "3")
	if code != 1 || r.Failed != 3 || r.OK != 0 {
		t.Fatalf("exit %d, %+v", code, r)
	}
}
