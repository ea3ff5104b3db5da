package setup_test

// Faults the server survives (issue 10): what a fault may cost is failed
// requests, answered with clean Matrix errors (503 while the server's own
// infrastructure is down); what it must never cost is an acknowledged
// event, an event twice, a transaction ID's event changing, or a restart
// of Myelin. The load and the checks are in load_test.go.

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// TestPostgresRestartUnderLoad restarts PostgreSQL (its own throwaway
// server) while senders send, once as an admin would (pg_ctl restart -m
// fast: sessions are terminated, then a clean shutdown) and once as a
// crash (-m immediate: recovery from the WAL at start).
func TestPostgresRestartUnderLoad(t *testing.T) {
	pg := startThrowawayPostgres(t)
	for _, mode := range []string{"fast", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			srv := testserver.Start(t, testserver.Config(t.TempDir(), pg.newDatabase(t)))
			room := newLoadRoom(t, srv.URL, 4)
			load := startLoad(t, srv.URL, room, loadOptions{})
			load.waitAcked(t, 40, 30*time.Second)
			before := load.acked()
			pg.restart(t, mode)
			// Recovered by itself: sends are acknowledged again.
			load.waitAcked(t, before+40, 40*time.Second)
			load.check(t)
			load.requireFailures(t, "503 M_UNKNOWN")
		})
	}
}

// throwawayPostgres is a PostgreSQL server that belongs to one test, which
// may restart it (the suite's shared server must never be restarted).
type throwawayPostgres struct {
	dir, url, bin, script string
}

// pgBinDir finds PostgreSQL's server programs as scripts/pg-throwaway.sh
// does ("" when they are not installed).
func pgBinDir() string {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "initdb")); err == nil {
			return dirs[i]
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

// startThrowawayPostgres starts a PostgreSQL server for t, stopped when t
// ends. It skips t only when PostgreSQL is not installed at all.
func startThrowawayPostgres(t *testing.T) *throwawayPostgres {
	t.Helper()
	bin := pgBinDir()
	if bin == "" {
		t.Skip("SKIPPED: PostgreSQL is not installed (no initdb in PG_BIN, /usr/lib/postgresql/*/bin or PATH): " +
			"the PostgreSQL restart test did NOT run; install PostgreSQL's server package to run it (CI has it)")
	}
	script, err := filepath.Abs("../scripts/pg-throwaway.sh")
	if err != nil {
		t.Fatal(err)
	}
	pg := &throwawayPostgres{dir: filepath.Join(t.TempDir(), "pg"), bin: bin, script: script}
	t.Cleanup(func() { _, _ = pg.run(nil, "stop") })
	// Commits must outlive a crash of the server: synchronous_commit back
	// on (fsync may stay off, the machine does not crash).
	out, err := pg.run([]string{"PG_EXTRA_OPTS=-c synchronous_commit=on"}, "start")
	if err != nil {
		t.Fatalf("start PostgreSQL: %v\n%s", err, out)
	}
	pg.url = strings.TrimSpace(out)
	return pg
}

// run runs scripts/pg-throwaway.sh CMD DIR ARGS... with env added.
func (pg *throwawayPostgres) run(env []string, cmd string, args ...string) (string, error) {
	c := exec.Command("bash", append([]string{pg.script, cmd, pg.dir}, args...)...)
	c.Env = append(append(os.Environ(), "PG_BIN="+pg.bin), env...)
	out, err := c.CombinedOutput()
	return string(out), err
}

// newDatabase creates an empty database and returns its URL.
func (pg *throwawayPostgres) newDatabase(t *testing.T) string {
	t.Helper()
	admin, err := sql.Open("postgres", pg.url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	name := fmt.Sprintf("myelin_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	return strings.Replace(pg.url, "/postgres?", "/"+name+"?", 1)
}

// restart restarts the server with pg_ctl restart -m mode and waits until
// it accepts connections again.
func (pg *throwawayPostgres) restart(t *testing.T, mode string) {
	t.Helper()
	start := time.Now()
	if out, err := pg.run(nil, "restart", mode); err != nil {
		t.Fatalf("restart PostgreSQL (-m %s): %v\n%s", mode, err, out)
	}
	t.Logf("PostgreSQL restarted (-m %s) in %v", mode, time.Since(start).Round(time.Millisecond))
}

// TestSQLiteDiskFull fills the disk under SQLite while senders send: sends
// are answered with a prompt 503 (not held for the roomserver's timeout,
// not a 500), /sync and reads keep working, the database stays sound, and
// once space is freed the same server takes sends again. Twice: with the
// database alone on a small tmpfs, and with the whole data directory
// there, as an admin has it, so that the bus's JetStream store fills too
// (nats-server then turns JetStream off, and the bus must bring it back).
func TestSQLiteDiskFull(t *testing.T) {
	for _, tc := range []struct {
		name   string
		busToo bool
	}{
		{"database", false},
		{"database and bus", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := mountTmpfs(t, 64<<20)
			dataDir := t.TempDir()
			if tc.busToo {
				dataDir = filepath.Join(dir, "data")
			}
			diskFull(t, dir, dataDir)
		})
	}
}

func diskFull(t *testing.T, dir, dataDir string) {
	dbPath := filepath.Join(dir, "myelin.db")
	srv := testserver.Start(t, testserver.Config(dataDir, dbPath))
	room := newLoadRoom(t, srv.URL, 4)
	load := startLoad(t, srv.URL, room, loadOptions{})
	load.waitAcked(t, 40, 30*time.Second)

	filler := fillDisk(t, dir, 128<<10)
	poll.Until(t, 30*time.Second, func() error {
		if n := load.failureCounts()["503 M_UNKNOWN"]; n < 20 {
			return fmt.Errorf("%d sends answered 503 so far; failures: %v", n, load.failureCounts())
		}
		return nil
	})
	t.Logf("disk full: %d sends acknowledged, failures %v", load.acked(), load.failureCounts())
	// Reads still work while nothing can be written.
	start := time.Now()
	room.Owner.Do(t, "GET", "/_matrix/client/v3/sync?timeout=0", nil).MustOK(t)
	n := len(roomMessages(t, room.Owner, room.ID))
	t.Logf("disk full: /sync and /messages (%d messages) answered in %v", n, time.Since(start).Round(time.Millisecond))
	if n == 0 {
		t.Error("no messages readable while the disk is full")
	}
	// Other writes fail as cleanly.
	for _, w := range []struct{ method, path string }{
		{"PUT", "/_matrix/client/v3/user/@owner:localhost/account_data/m.fault.test"},
		{"POST", "/_matrix/client/v3/createRoom"},
	} {
		body := map[string]any{"x": strings.Repeat("x", 64<<10)}
		if r := room.Owner.Do(t, w.method, w.path, body); r.Status != 503 || r.String("errcode") != "M_UNKNOWN" {
			t.Errorf("%s %s with the disk full: want 503 M_UNKNOWN, got %d %s", w.method, w.path, r.Status, r.Raw)
		}
	}
	requireIntegrity(t, dbPath)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	before := load.acked()
	load.waitAcked(t, before+1, 30*time.Second)
	t.Logf("space freed: first send acknowledged after %v", time.Since(freed).Round(time.Millisecond))
	load.waitAcked(t, before+40, 40*time.Second)
	load.check(t)
	load.requireFailures(t, "503 M_UNKNOWN")
	requireIntegrity(t, dbPath)
}

// mountTmpfs mounts a tmpfs of size bytes for t, unmounted when t ends
// (after everything registered later, such as a server using it). It
// skips t when it cannot mount (not root, or not allowed here).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIPPED: mounting a small tmpfs to fill needs root; the disk-full test did NOT run")
	}
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		t.Skipf("SKIPPED: cannot mount a tmpfs here (%v: %s); the disk-full test did NOT run", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			// Still busy: detach it now, it goes once the last file closes.
			t.Logf("umount %s: %v: %s; detaching it", dir, err, out)
			_ = exec.Command("umount", "-l", dir).Run()
		}
	})
	return dir
}

// fillDisk fills the file system of dir with a file, leaving about free
// bytes, and returns the file's path.
func fillDisk(t *testing.T, dir string, free int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var size int64
	for i := 0; i < 1<<14; i++ { // at most 16 GiB: a tmpfs is full long before
		n, err := f.Write(buf)
		size += int64(n)
		if err != nil {
			break
		}
	}
	if err := f.Truncate(max(0, size-free)); err != nil {
		t.Fatal(err)
	}
	return path
}

// requireIntegrity fails t unless SQLite's integrity check of the
// database at path says ok.
func requireIntegrity(t *testing.T, path string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var res string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&res); err != nil {
		t.Fatalf("integrity check: %v", err)
	}
	if res != "ok" {
		t.Fatalf("integrity check: %s", res)
	}
}

// TestKillDuringSends kills the server process (SIGKILL: no shutdown of
// any kind) while senders send, and starts it again on the same data: no
// acknowledged event is lost or doubled, and every send that was in
// flight, retried with its transaction ID, gets the event it made if it
// made one.
func TestKillDuringSends(t *testing.T) {
	bin := buildMyelin(t)
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		env := []string{
			"MYELIN_SERVER_NAME=localhost",
			"MYELIN_DATA_DIR=" + t.TempDir(),
			"MYELIN_DATABASE_URL=" + dbURL,
			"MYELIN_CLIENT_API_LISTEN=127.0.0.1:0",
			"MYELIN_REGISTRATION_OPEN=true",
			"MYELIN_REGISTRATION_BCRYPT_COST=4",
			"MYELIN_RATE_LIMITS_ENABLED=false",
			"MYELIN_LOGGING_FORMAT=json",
			"MYELIN_LOGGING_LEVEL=info",
		}
		p := startMyelin(t, bin, env)
		room := newLoadRoom(t, p.url, 4)
		load := startLoad(t, p.url, room, loadOptions{})
		load.waitAcked(t, 40, 30*time.Second)
		p.kill(t)
		before := load.acked()
		p = startMyelin(t, bin, env)
		load.setBase(p.url)
		load.waitAcked(t, before+40, 40*time.Second)
		load.check(t)
		load.requireFailures(t, "transport")
		p.stop(t)
	})
}

// buildMyelin builds cmd/myelin into a temporary directory, with the race
// detector when the tests have it.
func buildMyelin(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "myelin")
	args := []string{"build", "-o", bin}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				args = append(args, "-race")
			}
		}
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	c := exec.Command(gobin, append(args, "./cmd/myelin")...)
	c.Dir = ".."
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/myelin: %v\n%s", err, out)
	}
	return bin
}

// myelinProcess is cmd/myelin running as a child process.
type myelinProcess struct {
	cmd  *exec.Cmd
	url  string
	done chan struct{} // closed when the process has exited
	log  *childLog
}

// startMyelin runs bin with env and waits until it serves.
func startMyelin(t *testing.T, bin string, env []string) *myelinProcess {
	t.Helper()
	p := &myelinProcess{cmd: exec.Command(bin), done: make(chan struct{}), log: &childLog{t: t, ready: make(chan string, 1)}}
	p.cmd.Dir = t.TempDir() // no config.yaml there: the environment is the configuration
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	select {
	case p.url = <-p.log.ready:
	case <-p.done:
		t.Fatalf("myelin exited before serving: %v", p.cmd.ProcessState)
	case <-time.After(60 * time.Second):
		t.Fatal("myelin did not serve within 60 s")
	}
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *myelinProcess) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	t.Logf("myelin killed (pid %d)", p.cmd.Process.Pid)
}

// stop asks the process to stop (SIGTERM) and fails t unless it exits
// cleanly within 30 s.
func (p *myelinProcess) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		if !p.cmd.ProcessState.Success() {
			t.Errorf("myelin stopped with %v", p.cmd.ProcessState)
		}
	case <-time.After(30 * time.Second):
		t.Error("myelin did not stop within 30 s of SIGTERM")
	}
}

// childLog passes a child's output to the test log, line by line, and
// picks out its client URL and any data race the race detector reports.
type childLog struct {
	t     *testing.T
	ready chan string
	mu    sync.Mutex
	buf   []byte
}

func (l *childLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := string(l.buf[:i])
		l.buf = l.buf[i+1:]
		l.t.Log("myelin: " + line)
		if strings.Contains(line, "WARNING: DATA RACE") {
			l.t.Error("the race detector found a data race in myelin (see its log)")
		}
		var rec struct {
			Msg       string `json:"msg"`
			ClientURL string `json:"client_url"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "Myelin is running" {
			l.ready <- rec.ClientURL
		}
	}
}
