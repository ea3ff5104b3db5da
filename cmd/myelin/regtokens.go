package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"myelin/setup/config"
	uapi "myelin/userapi/api"
)

// registrationToken is `myelin registration-token create|list|delete`:
// the tokens registration asks for when registration.requires_token is
// set, made straight in the database (as create-account does).
func registrationToken(cfg *config.Config, args []string, stdout, stderr io.Writer) int {
	usage := func() int {
		fmt.Fprintln(stderr, "usage: myelin registration-token create [--token T] [--uses N] [--expires DURATION]")
		fmt.Fprintln(stderr, "       myelin registration-token list [--valid|--invalid]")
		fmt.Fprintln(stderr, "       myelin registration-token delete TOKEN")
		return 2
	}
	if len(args) == 0 {
		return usage()
	}
	fs := flag.NewFlagSet("registration-token "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		token   = fs.String("token", "", "the token (default: 16 random characters)")
		uses    = fs.Int64("uses", 0, "how many registrations it allows (0: unlimited)")
		expires = fs.Duration("expires", 0, "how long from now it is valid (0: for ever)")
		valid   = fs.Bool("valid", false, "list only valid tokens")
		invalid = fs.Bool("invalid", false, "list only invalid tokens")
	)
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	ctx := context.Background()
	switch args[0] {
	case "create":
		if fs.NArg() != 0 || *uses < 0 || *expires < 0 {
			return usage()
		}
		t := uapi.RegistrationToken{Token: *token}
		if t.Token == "" {
			var b [12]byte
			if _, err := rand.Read(b[:]); err != nil {
				fmt.Fprintln(stderr, "myelin:", err)
				return 1
			}
			t.Token = base64.RawURLEncoding.EncodeToString(b[:])
		}
		if err := uapi.ValidRegistrationToken(t.Token); err != nil {
			fmt.Fprintln(stderr, "myelin:", err)
			return 2
		}
		if *uses > 0 {
			t.UsesAllowed = uses
		}
		if *expires > 0 {
			ms := time.Now().Add(*expires).UnixMilli()
			t.ExpiryTime = &ms
		}
		return withUsers(ctx, cfg, stderr, func(users regTokenStore) error {
			if err := users.CreateRegistrationToken(ctx, t); err != nil {
				return err
			}
			fmt.Fprintln(stdout, t.Token)
			return nil
		})
	case "list":
		if fs.NArg() != 0 || (*valid && *invalid) {
			return usage()
		}
		var only *bool
		if *valid || *invalid {
			only = valid
		}
		return withUsers(ctx, cfg, stderr, func(users regTokenStore) error {
			tokens, err := users.RegistrationTokens(ctx, only)
			if err != nil {
				return err
			}
			for _, t := range tokens {
				fmt.Fprintln(stdout, describeToken(t))
			}
			return nil
		})
	case "delete":
		if fs.NArg() != 1 {
			return usage()
		}
		return withUsers(ctx, cfg, stderr, func(users regTokenStore) error {
			err := users.DeleteRegistrationToken(ctx, fs.Arg(0))
			if uapi.IsNotFound(err) {
				return fmt.Errorf("no registration token %q", fs.Arg(0))
			}
			return err
		})
	default:
		return usage()
	}
}

// regTokenStore is what the command needs of the userapi.
type regTokenStore interface {
	CreateRegistrationToken(ctx context.Context, t uapi.RegistrationToken) error
	RegistrationTokens(ctx context.Context, valid *bool) ([]uapi.RegistrationToken, error)
	DeleteRegistrationToken(ctx context.Context, token string) error
}

func withUsers(ctx context.Context, cfg *config.Config, stderr io.Writer, f func(regTokenStore) error) int {
	users, closeDB, err := openUsers(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "myelin:", err)
		return 1
	}
	defer closeDB()
	if err := f(users); err != nil {
		if errors.Is(err, uapi.ErrTokenExists) {
			fmt.Fprintln(stderr, "myelin: that registration token exists already")
			return 1
		}
		fmt.Fprintln(stderr, "myelin:", err)
		return 1
	}
	return 0
}

// describeToken is one line of `list`: the token, its uses and expiry.
func describeToken(t uapi.RegistrationToken) string {
	var b strings.Builder
	b.WriteString(t.Token)
	uses := "unlimited"
	if t.UsesAllowed != nil {
		uses = fmt.Sprint(*t.UsesAllowed)
	}
	fmt.Fprintf(&b, "\tuses_allowed=%s pending=%d completed=%d", uses, t.Pending, t.Completed)
	if t.ExpiryTime != nil {
		fmt.Fprintf(&b, " expires=%s", time.UnixMilli(*t.ExpiryTime).UTC().Format(time.RFC3339))
	} else {
		b.WriteString(" expires=never")
	}
	return b.String()
}
