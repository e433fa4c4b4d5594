package apps

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// pgBin is where Debian 12 puts PostgreSQL 15's server programs.
const pgBin = "/usr/lib/postgresql/15/bin"

// pgTemplateDir returns a data directory made by initdb once per runner
// (owned by the postgres user, trusting the suite's subnets); each run
// copies it, which takes a fraction of initdb's time.
func (r *Runner) pgTemplateDir(ctx context.Context) (string, error) {
	if r.pgTemplate != "" {
		return r.pgTemplate, nil
	}
	dir := filepath.Join(r.dir, "pg-template")
	// initdb runs as postgres, which may not create it in our directory.
	u, err := user.Lookup("postgres")
	if err != nil {
		return "", fmt.Errorf("the postgres user (from the postgresql package): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", err
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, "setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups",
		filepath.Join(pgBin, "initdb"), "-D", dir, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8",
		"--locale=C").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("initdb: %w: %s", err, tail(string(out)))
	}
	hba := fmt.Sprintf("host all all %s trust\nhost all all %s trust\n", r.cfg.Subnet4, r.cfg.Subnet6)
	f, err := os.OpenFile(filepath.Join(dir, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(hba); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	r.pgTemplate = dir
	return dir, nil
}

func (r *Runner) postgresCase() Case {
	txns := r.count(2000, 250)
	rows := r.count(400000, 50000)
	const clients = 4
	data := func() (string, string, error) {
		return r.textFile("pg-copy", rows, func(i int, rng *rand.Rand) string {
			return fmt.Sprintf("%d\t%s\n", i, hexString(rng, 96))
		})
	}
	return Case{
		Prepare: func(ctx context.Context) error {
			if _, err := r.pgTemplateDir(ctx); err != nil {
				return err
			}
			_, _, err := data()
			return err
		},
		Name: "postgres",
		Desc: fmt.Sprintf("PostgreSQL 15: pgbench -i, %d clients × %d transactions, a consistency query, COPY of %d rows in and out compared by md5",
			clients, txns, rows),
		Pods:    2,
		Tools:   []string{filepath.Join(pgBin, "postgres"), filepath.Join(pgBin, "initdb"), "pgbench", "psql", "setpriv"},
		Timeout: 3 * time.Minute,
		Run: func(ctx context.Context, e *Env) (Observed, error) {
			tmpl, err := r.pgTemplateDir(ctx)
			if err != nil {
				return Observed{}, err
			}
			copyFile, copySum, err := data()
			if err != nil {
				return Observed{}, err
			}
			data := filepath.Join(e.Dir, "pgdata")
			if out, err := exec.CommandContext(ctx, "cp", "-a", tmpl, data).CombinedOutput(); err != nil {
				return Observed{}, fmt.Errorf("copy the data directory: %w: %s", err, out)
			}
			b := e.Pods[1].IPv4.String()
			srv, err := e.Start(e.Pods[1], "setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups",
				filepath.Join(pgBin, "postgres"), "-D", data, "-c", "listen_addresses="+b, "-c", "port=5432",
				"-c", "unix_socket_directories="+data, "-c", "fsync=off", "-c", "synchronous_commit=off",
				"-c", "full_page_writes=off", "-c", "max_connections=20", "-c", "shared_buffers=64MB")
			if err != nil {
				return Observed{}, err
			}
			if err := e.Listen(ctx, srv, 5432); err != nil {
				return Observed{}, err
			}
			// The server accepts connections a moment after it listens.
			conn := fmt.Sprintf("-h %s -p 5432 -U postgres", e.To(1))
			if _, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf("for i in $(seq 100); do pg_isready -q %s && exit 0; sleep 0.1; done; exit 1", conn)); err != nil {
				return Observed{}, fmt.Errorf("postgres not ready: %w", err)
			}
			if _, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf("pgbench %s -q -i -s 2 postgres", conn)); err != nil {
				return Observed{}, err
			}
			bench, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf("pgbench %s -n -c %d -j 2 -t %d postgres", conn, clients, txns))
			if err != nil {
				return Observed{}, err
			}
			if !strings.Contains(bench, fmt.Sprintf("number of transactions actually processed: %d/%d", clients*txns, clients*txns)) ||
				!strings.Contains(bench, "number of failed transactions: 0") {
				return Observed{}, fmt.Errorf("pgbench: %s", tail(bench))
			}
			// pgbench's invariant: every balance total equals the history's.
			consistent, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf(`psql %s -XAtc "select (select sum(abalance) from pgbench_accounts) = h.s and (select sum(bbalance) from pgbench_branches) = h.s and (select sum(tbalance) from pgbench_tellers) = h.s, h.n from (select sum(delta) s, count(*) n from pgbench_history) h" postgres`, conn))
			if err != nil {
				return Observed{}, err
			}
			consistent = strings.TrimSpace(consistent)
			if consistent != fmt.Sprintf("t|%d", clients*txns) {
				return Observed{Digest: "consistency " + consistent}, fmt.Errorf("pgbench consistency query: %q", consistent)
			}
			copied, err := e.RunSh(ctx, e.Pods[0], fmt.Sprintf(
				`psql %[1]s -Xqv ON_ERROR_STOP=1 -c "create table blob (id int primary key, v text)" -c "\copy blob from '%[2]s'" postgres && psql %[1]s -Xqv ON_ERROR_STOP=1 -c "\copy (select * from blob order by id) to stdout" postgres | md5sum`,
				conn, copyFile))
			if err != nil {
				return Observed{}, err
			}
			d, err := md5Lines(copied, 1, copySum)
			fi, _ := os.Stat(copyFile)
			var payload int64
			if fi != nil {
				payload = 2 * fi.Size()
			}
			return Observed{Digest: fmt.Sprintf("pgbench %d transactions, consistent %s; COPY %s", clients*txns, consistent, d), Payload: payload}, err
		},
	}
}
