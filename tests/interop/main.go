// Command interop checks that Myelin federates with Dendrite: run.sh
// starts both servers on loopback addresses, and this program writes their
// TLS and Dendrite files (setup), waits for them (wait) and drives the
// scenario over the Client-Server API of both (run), printing a PASS, FAIL
// or SKIP line per step. It is a test tool, not part of the server.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"myelin/internal/poll"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: interop setup|wait|run [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "setup":
		err = cmdSetup(args[1:], stdout)
	case "wait":
		err = cmdWait(args[1:])
	case "run":
		var failed bool
		failed, err = cmdRun(args[1:], stdout)
		if err == nil && failed {
			return 1
		}
	default:
		err = fmt.Errorf("unknown command %q", args[0])
	}
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "interop:", err)
		return 1
	}
	return 0
}

func cmdSetup(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	var p setupParams
	fs.StringVar(&p.Dir, "dir", "", "directory to write the CA, certificates and Dendrite's files into")
	fs.StringVar(&p.MyelinIP, "myelin-ip", "127.0.0.41", "Myelin's loopback address")
	fs.StringVar(&p.DendriteIP, "dendrite-ip", "127.0.0.42", "Dendrite's loopback address")
	fs.StringVar(&p.DendriteName, "dendrite-name", "127.0.0.42:8448", "Dendrite's server name")
	fs.StringVar(&p.LogLevel, "dendrite-log-level", "info", "Dendrite's log level")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if p.Dir == "" {
		return errors.New("setup: -dir is required")
	}
	f, err := writeSetup(p)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote CA %s, certificates and %s\n", f.CA, f.DendriteYAML)
	return nil
}

// cmdWait waits for a server's client API to answer /versions.
func cmdWait(args []string) error {
	fs := flag.NewFlagSet("wait", flag.ContinueOnError)
	base := fs.String("url", "", "base URL of the client API")
	total := fs.Duration("timeout", 60*time.Second, "how long to wait")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c := &http.Client{Timeout: 5 * time.Second}
	return poll.Wait(*total, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, *base+"/_matrix/client/versions", nil)
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return fmt.Errorf("%s is not up: %w", *base, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s/_matrix/client/versions answered %s", *base, resp.Status)
		}
		return nil
	})
}

func cmdRun(args []string, stdout io.Writer) (failed bool, err error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var p scenarioParams
	fs.StringVar(&p.MyelinURL, "myelin", "http://127.0.0.41:8008", "Myelin's client API")
	fs.StringVar(&p.DendriteURL, "dendrite", "http://127.0.0.42:8008", "Dendrite's client API")
	fs.StringVar(&p.MyelinName, "myelin-name", "127.0.0.41:8448", "Myelin's server name")
	fs.StringVar(&p.DendriteName, "dendrite-name", "127.0.0.42:8448", "Dendrite's server name")
	fs.StringVar(&p.RoomVersion, "room-version", "", "version of the rooms created (empty: each server's default)")
	fs.DurationVar(&p.Wait, "wait", 30*time.Second, "how long a step waits for the other server to see something")
	if err := fs.Parse(args); err != nil {
		return false, err
	}
	res := runScenario(context.Background(), p, stdout)
	return res.failed > 0, nil
}
