//go:build goolm

package setup_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/crypto/backup"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"myelin/internal/poll"
	"myelin/internal/sqldb/sqldbtest"
	"myelin/internal/testserver"
)

// cryptoDevice is one logged-in device with mautrix's Olm machine (pure Go
// Olm, build tag goolm) and its own /sync position, which brings it
// to-device messages, device-list changes and one-time key counts.
type cryptoDevice struct {
	name  string
	cli   *mautrix.Client
	mach  *crypto.OlmMachine
	state mautrix.StateStore
	since string
}

// loginDevice logs user in again (a new device) and starts its crypto.
func loginDevice(t *testing.T, base string, user id.UserID, name string) *cryptoDevice {
	t.Helper()
	cli, err := mautrix.NewClient(base, "", "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Login(context.Background(), &mautrix.ReqLogin{
		Type:             mautrix.AuthTypePassword,
		Identifier:       mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: user.Localpart()},
		Password:         "password-" + user.Localpart(),
		StoreCredentials: true,
	})
	if err != nil {
		t.Fatalf("login %s: %v", name, err)
	}
	return startCrypto(t, cli, name)
}

// startCrypto makes the device's Olm account and uploads its device keys
// and one-time keys.
func startCrypto(t *testing.T, cli *mautrix.Client, name string) *cryptoDevice {
	t.Helper()
	ctx := context.Background()
	state := mautrix.NewMemoryStateStore()
	cs, ok := state.(crypto.StateStore)
	if !ok {
		t.Fatal("mautrix's memory state store is no crypto.StateStore")
	}
	d := &cryptoDevice{name: name, cli: cli, state: state,
		mach: crypto.NewOlmMachine(cli, cryptoLog(t, name), crypto.NewMemoryStore(nil), cs)}
	if err := d.mach.Load(ctx); err != nil {
		t.Fatalf("olm account of %s: %v", name, err)
	}
	if err := d.mach.ShareKeys(ctx, -1); err != nil {
		t.Fatalf("upload keys of %s: %v", name, err)
	}
	// A client tracks its own user's devices from the start (mautrix's
	// store holds only this device until asked).
	if _, err := d.mach.FetchKeys(ctx, []id.UserID{cli.UserID}, true); err != nil {
		t.Fatalf("own devices of %s: %v", name, err)
	}
	if err := d.sync(ctx); err != nil {
		t.Fatal(err)
	}
	return d
}

// restart starts d's Olm machine again on its store, as a client
// restarting would.
func (d *cryptoDevice) restart(t *testing.T) {
	t.Helper()
	cs, _ := d.state.(crypto.StateStore)
	d.mach = crypto.NewOlmMachine(d.cli, cryptoLog(t, d.name), d.mach.CryptoStore, cs)
	if err := d.mach.Load(context.Background()); err != nil {
		t.Fatalf("olm account of %s: %v", d.name, err)
	}
}

// sync hands one /sync (no waiting) to the Olm machine, as a client would.
func (d *cryptoDevice) sync(ctx context.Context) error {
	resp, err := d.cli.SyncRequest(ctx, 0, d.since, "", false, "")
	if err != nil {
		return fmt.Errorf("/sync of %s: %w", d.name, err)
	}
	d.mach.ProcessSyncResponse(ctx, resp, d.since)
	d.since = resp.NextBatch
	return nil
}

// inRoom tells the device's state store that room is encrypted and who is
// in it, as the room's state in a client's /sync would (mautrix renews its
// room key for the rooms of a user whose devices change).
func (d *cryptoDevice) inRoom(t *testing.T, room id.RoomID, members ...id.UserID) {
	t.Helper()
	ctx := context.Background()
	if err := d.state.SetEncryptionEvent(ctx, room, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if err := d.state.SetMembership(ctx, room, m, event.MembershipJoin); err != nil {
			t.Fatal(err)
		}
	}
}

// sendEncrypted shares d's Megolm session with every device of users (the
// keys come from /keys/query and /keys/claim, the session goes out in
// Olm-encrypted to-device messages) and sends body encrypted with it.
func (d *cryptoDevice) sendEncrypted(t *testing.T, room id.RoomID, users []id.UserID, body string) (id.EventID, id.SessionID) {
	t.Helper()
	ctx := context.Background()
	if err := d.sync(ctx); err != nil { // device-list changes first, as a client's sync loop would
		t.Fatal(err)
	}
	if err := d.mach.ShareGroupSession(ctx, room, users); err != nil {
		t.Fatalf("%s shares its room key: %v", d.name, err)
	}
	enc, err := d.mach.EncryptMegolmEvent(ctx, room, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body})
	if err != nil {
		t.Fatalf("encrypt on %s: %v", d.name, err)
	}
	sent, err := d.cli.SendMessageEvent(ctx, room, event.EventEncrypted, enc)
	if err != nil {
		t.Fatalf("send m.room.encrypted from %s: %v", d.name, err)
	}
	return sent.EventID, enc.SessionID
}

// decrypts waits until d has the room key (by to-device, or restored from
// a backup) and reads body out of the event.
func (d *cryptoDevice) decrypts(t *testing.T, room id.RoomID, evID id.EventID, body string) {
	t.Helper()
	ctx := context.Background()
	err := poll.Wait(30*time.Second, func() error {
		if err := d.sync(ctx); err != nil {
			return err
		}
		ev, err := d.cli.GetEvent(ctx, room, evID)
		if err != nil {
			return fmt.Errorf("event %s for %s: %w", evID, d.name, err)
		}
		if err := ev.Content.ParseRaw(ev.Type); err != nil {
			return fmt.Errorf("content of %s: %w", evID, err)
		}
		dec, err := d.mach.DecryptMegolmEvent(ctx, ev)
		if err != nil {
			return fmt.Errorf("%s cannot decrypt %s: %w", d.name, evID, err)
		}
		if dec.Content.Parsed == nil {
			if err := dec.Content.ParseRaw(dec.Type); err != nil {
				return fmt.Errorf("decrypted content of %s: %w", evID, err)
			}
		}
		if got := dec.Content.AsMessage().Body; got != body {
			return fmt.Errorf("%s decrypted %q, want %q", d.name, got, body)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEncryptedRoom drives the server with a real crypto client (mautrix's
// Olm machine): Alice and Bob on two devices each, an encrypted room whose
// messages every other device decrypts; a device Bob adds later gets the
// room key of Alice's next message; both set up cross-signing, Alice signs
// her devices and Bob verifies her (signs her master key), after which
// another device of Bob's sees hers as verified; and a room key Alice backs
// up is restored on a fresh device of hers, which then decrypts history.
func TestEncryptedRoom(t *testing.T) {
	sqldbtest.Each(t, func(t *testing.T, dbURL string) {
		ctx := context.Background()
		srv := testserver.Start(t, testserver.Config(t.TempDir(), dbURL))

		alice1 := startCrypto(t, newClient(t, srv.URL, "alice"), "alice1")
		bob1 := startCrypto(t, newClient(t, srv.URL, "bob"), "bob1")
		alice, bob := alice1.cli.UserID, bob1.cli.UserID
		alice2 := loginDevice(t, srv.URL, alice, "alice2")
		bob2 := loginDevice(t, srv.URL, bob, "bob2")

		created, err := alice1.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
			Preset: "private_chat", Invite: []id.UserID{bob},
			InitialState: []*event.Event{{Type: event.StateEncryption,
				Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}}}},
		})
		if err != nil {
			t.Fatalf("create room: %v", err)
		}
		room := created.RoomID
		if _, err := bob1.cli.JoinRoomByID(ctx, room); err != nil {
			t.Fatalf("join: %v", err)
		}
		members := []id.UserID{alice, bob}
		for _, d := range []*cryptoDevice{alice1, alice2, bob1, bob2} {
			d.inRoom(t, room, members...)
		}

		first, session := alice1.sendEncrypted(t, room, members, "first secret")
		for _, d := range []*cryptoDevice{alice2, bob1, bob2} {
			d.decrypts(t, room, first, "first secret")
		}
		reply, _ := bob2.sendEncrypted(t, room, members, "a reply")
		for _, d := range []*cryptoDevice{alice1, alice2, bob1} {
			d.decrypts(t, room, reply, "a reply")
		}

		// Bob's new device shows in Alice's device_lists.changed; her next
		// share reaches it.
		bob3 := loginDevice(t, srv.URL, bob, "bob3")
		bob3.inRoom(t, room, members...)
		second, _ := alice1.sendEncrypted(t, room, members, "second secret")
		bob3.decrypts(t, room, second, "second secret")

		// Cross-signing: Alice and Bob publish their keys (behind the
		// password). Alice signs both her devices with her self-signing key;
		// Bob, fetching her keys, finds them cross-signed by the master key
		// he trusts on first use, and her third device (below) not.
		publishCrossSigning := func(d *cryptoDevice, password string) {
			t.Helper()
			xkeys, err := d.mach.GenerateCrossSigningKeys()
			if err != nil {
				t.Fatal(err)
			}
			uia := func(r *mautrix.RespUserInteractive) any {
				return &mautrix.ReqUIAuthLogin{BaseAuthData: mautrix.BaseAuthData{Type: mautrix.AuthTypePassword, Session: r.Session},
					User: d.cli.UserID.String(), Password: password}
			}
			if err := d.mach.PublishCrossSigningKeys(ctx, xkeys, uia); err != nil {
				t.Fatalf("publish cross-signing keys of %s: %v", d.name, err)
			}
		}
		publishCrossSigning(alice1, "password-alice")
		publishCrossSigning(bob1, "password-bob")
		for _, d := range []*cryptoDevice{alice1, alice2} {
			dev, err := alice1.mach.GetOrFetchDevice(ctx, alice, d.cli.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			if err := alice1.mach.SignOwnDevice(ctx, dev); err != nil {
				t.Fatalf("sign %s (/keys/signatures/upload): %v", d.name, err)
			}
		}
		// trust is how viewer (a device of Bob's) sees d, from a fresh
		// /keys/query: what the server holds, not what viewer signed itself.
		trust := func(viewer, d *cryptoDevice) id.TrustState {
			t.Helper()
			if _, err := viewer.mach.FetchKeys(ctx, []id.UserID{alice}, true); err != nil {
				t.Fatal(err)
			}
			dev, err := viewer.mach.GetOrFetchDevice(ctx, alice, d.cli.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			ts, err := viewer.mach.ResolveTrustContext(ctx, dev)
			if err != nil {
				t.Fatal(err)
			}
			return ts
		}
		for _, d := range []*cryptoDevice{alice1, alice2} {
			if ts := trust(bob1, d); ts != id.TrustStateCrossSignedTOFU {
				t.Fatalf("before verifying, bob sees %s as %s, want cross-signed (TOFU)", d.name, ts)
			}
		}

		// Bob verifies Alice: bob1 signs her master key with his
		// user-signing key (/keys/signatures/upload). bob2, which holds no
		// private cross-signing key, signs Bob's master key with its device
		// key (so it trusts Bob's keys) and then learns of the signature of
		// Alice's only from /keys/query: her devices are verified to it.
		aliceKeys, err := bob1.mach.GetCrossSigningPublicKeys(ctx, alice)
		if err != nil || aliceKeys == nil {
			t.Fatalf("alice's cross-signing keys for bob: %v", err)
		}
		if err := bob1.mach.SignUser(ctx, alice, aliceKeys.MasterKey); err != nil {
			t.Fatalf("bob signs alice's master key: %v", err)
		}
		bob2.restart(t) // mautrix remembers that bob2 found no keys of Bob's at its start
		if _, err := bob2.mach.FetchKeys(ctx, []id.UserID{bob}, true); err != nil {
			t.Fatal(err)
		}
		if err := bob2.mach.SignOwnMasterKey(ctx); err != nil {
			t.Fatalf("bob2 signs bob's master key: %v", err)
		}
		for _, d := range []*cryptoDevice{alice1, alice2} {
			if ts := trust(bob2, d); ts != id.TrustStateCrossSignedVerified {
				t.Fatalf("after bob verified alice, bob2 sees %s as %s, want cross-signed verified", d.name, ts)
			}
		}
		// Alice's keys show her no signature of Bob's: it is Bob's alone.
		q, err := alice1.cli.QueryKeys(ctx, &mautrix.ReqQueryKeys{DeviceKeys: mautrix.DeviceKeysRequest{alice: {}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := q.MasterKeys[alice].Signatures[bob]; ok {
			t.Fatalf("alice sees bob's signature of her master key: %v", q.MasterKeys[alice].Signatures)
		}

		// Key backup: Alice backs up the first message's room key; a fresh
		// device of hers restores it with the backup key alone.
		backupKey, err := backup.NewMegolmBackupKey()
		if err != nil {
			t.Fatal(err)
		}
		pub := id.Ed25519(base64.RawStdEncoding.EncodeToString(backupKey.PublicKey().Bytes()))
		version, err := alice1.cli.CreateKeyBackupVersion(ctx, &mautrix.ReqRoomKeysVersionCreate[backup.MegolmAuthData]{
			Algorithm: id.KeyBackupAlgorithmMegolmBackupV1,
			AuthData:  backup.MegolmAuthData{PublicKey: pub},
		})
		if err != nil {
			t.Fatalf("create backup version: %v", err)
		}
		igs, err := alice1.mach.CryptoStore.GetGroupSession(ctx, room, session)
		if err != nil || igs == nil {
			t.Fatalf("alice1's own inbound session %s: %v", session, err)
		}
		exported, err := igs.Internal.Export(igs.Internal.FirstKnownIndex())
		if err != nil {
			t.Fatal(err)
		}
		enc, err := backup.EncryptSessionData(backupKey, backup.MegolmSessionData{
			Algorithm: id.AlgorithmMegolmV1, SenderKey: igs.SenderKey, SessionKey: string(exported),
			SenderClaimedKeys: backup.SenderClaimedKeys{Ed25519: igs.SigningKey}, ForwardingKeyChain: []string{},
		})
		if err != nil {
			t.Fatal(err)
		}
		data, err := json.Marshal(enc)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := alice1.cli.PutKeysInBackupForRoomAndSession(ctx, version.Version, room, session, &mautrix.ReqKeyBackupData{
			FirstMessageIndex: int(igs.Internal.FirstKnownIndex()), SessionData: data,
		}); err != nil {
			t.Fatalf("back up the room key: %v", err)
		}

		alice3 := loginDevice(t, srv.URL, alice, "alice3")
		alice3.inRoom(t, room, members...)
		restored, err := alice3.mach.DownloadAndStoreLatestKeyBackup(ctx, backupKey)
		if err != nil {
			t.Fatalf("restore the backup: %v", err)
		}
		if restored != version.Version {
			t.Fatalf("restored version %q, want %q", restored, version.Version)
		}
		alice3.decrypts(t, room, first, "first secret")
		if ts := trust(bob2, alice3); ts >= id.TrustStateCrossSignedUntrusted {
			t.Fatalf("bob2 sees alice3, which nothing signed, as %s", ts)
		}
	})
}

// cryptoLog passes the Olm machine's errors to the test's log (its
// warnings include the normal first pass of sharing a room key).
func cryptoLog(t *testing.T, name string) *zerolog.Logger {
	l := zerolog.New(zerolog.ConsoleWriter{Out: tWriter{t}, NoColor: true}).
		With().Str("device", name).Logger().Level(zerolog.ErrorLevel)
	return &l
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
