// Command myelin runs the Myelin Matrix homeserver.
//
//	myelin [--config FILE]                          run the server
//	myelin [--config FILE] create-account USER [--admin] [--password P]
//	myelin [--config FILE] registration-token create|list|delete ...
//
// Without --config it reads ./config.yaml when present, else runs on the
// built-in defaults. Every setting can be overridden by an environment
// variable named after its path (client_api.listen: MYELIN_CLIENT_API_LISTEN).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"myelin/internal/sqldb"
	"myelin/setup"
	"myelin/setup/config"
	"myelin/userapi"
	uapi "myelin/userapi/api"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("myelin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "configuration file (default ./config.yaml if it exists)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: myelin [--config FILE]                 run the homeserver")
		fmt.Fprintln(stderr, "       myelin [--config FILE] create-account USER [--admin] [--password P]")
		fmt.Fprintln(stderr, "       myelin [--config FILE] registration-token create [--token T] [--uses N] [--expires D]")
		fmt.Fprintln(stderr, "       myelin [--config FILE] registration-token list [--valid|--invalid]")
		fmt.Fprintln(stderr, "       myelin [--config FILE] registration-token delete TOKEN")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	path := *cfgPath
	if path == "" {
		if _, err := os.Stat("config.yaml"); err == nil {
			path = "config.yaml"
		}
	}
	cfg, err := config.Load(path, os.Environ())
	if err != nil {
		fmt.Fprintln(stderr, "myelin:", err)
		return 2
	}
	rest := fs.Args()
	if len(rest) > 0 {
		switch rest[0] {
		case "create-account":
			return createAccount(cfg, rest[1:], stdin, stdout, stderr)
		case "registration-token":
			return registrationToken(cfg, rest[1:], stdout, stderr)
		default:
			fmt.Fprintf(stderr, "myelin: unknown command %q\n", rest[0])
			fs.Usage()
			return 2
		}
	}
	return serve(cfg, stderr)
}

func serve(cfg *config.Config, stderr io.Writer) int {
	log, closer, err := setup.NewLogger(cfg.Logging)
	if err != nil {
		fmt.Fprintln(stderr, "myelin:", err)
		return 2
	}
	defer closer.Close()
	tuneGC(cfg.Memory, os.Getenv)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := setup.New(ctx, cfg, log)
	if err != nil {
		log.WithError(err).Error("cannot start")
		return 1
	}
	if err := srv.Start(); err != nil {
		log.WithError(err).Error("cannot start")
		_ = srv.Stop(context.Background())
		return 1
	}
	log.WithFields(logrus.Fields{"server_name": cfg.ServerName, "client_url": srv.ClientURL(), "database": dbKind(cfg.Database.URL)}).Info("Myelin is running")
	<-ctx.Done()
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Stop(sctx); err != nil {
		log.WithError(err).Warn("shutdown did not finish cleanly")
	}
	log.Info("stopped")
	return 0
}

func dbKind(url string) string {
	if sqldb.IsPostgresURL(url) {
		return "postgres"
	}
	return "sqlite:" + url
}

// createAccount makes an account directly in the database, whether or not
// the server is running, so that a server with registration closed still
// has a way in.
func createAccount(cfg *config.Config, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("create-account", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.Bool("admin", false, "make the account a server admin")
	password := fs.String("password", "", "password (read from standard input when not given)")
	// Allow "create-account USER --admin" as well as flags first.
	var user string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		user, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if user == "" && fs.NArg() > 0 {
		user = fs.Arg(0)
	}
	if user == "" {
		fmt.Fprintln(stderr, "usage: myelin create-account USER [--admin] [--password P]")
		return 2
	}
	localpart := strings.TrimPrefix(user, "@")
	if l, server, ok := strings.Cut(localpart, ":"); ok {
		if server != cfg.ServerName {
			fmt.Fprintf(stderr, "myelin: %s is not on this server (%s)\n", user, cfg.ServerName)
			return 2
		}
		localpart = l
	}
	if *password == "" {
		fmt.Fprint(stderr, "Password: ")
		line, err := bufio.NewReader(stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintln(stderr, "myelin: reading password:", err)
			return 1
		}
		*password = strings.TrimRight(line, "\r\n")
		if *password == "" {
			fmt.Fprintln(stderr, "myelin: the password must not be empty")
			return 2
		}
	}
	ctx := context.Background()
	users, closeDB, err := openUsers(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "myelin:", err)
		return 1
	}
	defer closeDB()
	acc, err := users.CreateAccount(ctx, uapi.CreateAccountRequest{Localpart: localpart, Password: *password, IsAdmin: *admin})
	if err != nil {
		fmt.Fprintln(stderr, "myelin: create account:", err)
		return 1
	}
	kind := "user"
	if acc.IsAdmin {
		kind = "admin"
	}
	fmt.Fprintf(stdout, "created %s %s\n", kind, acc.UserID)
	return 0
}

// openUsers opens the database and the userapi on it, without a bus, for
// the commands that change accounts whether or not the server runs.
func openUsers(ctx context.Context, cfg *config.Config, stderr io.Writer) (*userapi.UserAPI, func(), error) {
	log := logrus.New()
	log.SetOutput(stderr)
	log.SetLevel(logrus.WarnLevel)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, nil, err
	}
	db, err := sqldb.Open(ctx, cfg.Database.URL, sqldb.Options{MaxOpenConns: 2})
	if err != nil {
		return nil, nil, fmt.Errorf("database: %w", err)
	}
	users, err := userapi.New(ctx, db, nil, cfg, log.WithField("component", "userapi"))
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return users, func() { db.Close() }, nil
}

// No heap profile is kept unless the debug listener serves one (it sets
// its own rate): the profile's table of allocation sites costs a few MB
// of every server otherwise.
func init() { runtime.MemProfileRate = 0 }

// tuneGC applies the memory settings, except those the GOGC and
// GOMEMLIMIT variables already set: an admin's environment wins.
func tuneGC(m config.Memory, getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(m.GCPercent)
	}
	if m.LimitMB > 0 && getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(m.LimitMB << 20)
	}
}
