//go:build goolm

package main

import (
	"context"
	"errors"
	"fmt"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/crypto"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"myelin/internal/poll"
)

// encryption is one side's end-to-end encryption: an Olm account for its
// user's device, kept in memory, and the device's /sync position, which
// brings it to-device messages and device list changes.
type encryption struct {
	mach  *crypto.OlmMachine
	state mautrix.StateStore
	since string
}

// encryptedSteps: both users upload device and one-time keys; then, in an
// encrypted room of one server joined from the other, each side shares a
// Megolm session with the other's device (/keys/query and /keys/claim
// across servers, the room key in an Olm-encrypted to-device message
// across servers) and sends an m.room.encrypted message that the other
// decrypts. mautrix-go's pure Go Olm (build tag goolm) does the crypto.
func encryptedSteps(p scenarioParams, owner, guest *side, need string) []step {
	var roomID id.RoomID
	keys := "encrypted room: device and one-time keys uploaded on both servers"
	joined := "encrypted room: created on " + owner.label + ", joined from " + guest.label
	return []step{
		{name: keys, need: need, run: func(ctx context.Context) error {
			for _, s := range []*side{owner, guest} {
				if err := s.startEncryption(ctx); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: joined, need: keys, run: func(ctx context.Context) error {
			var err error
			roomID, err = sharedRoom(ctx, p, owner, guest, []*event.Event{{
				Type:    event.StateEncryption,
				Content: event.Content{Parsed: &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}},
			}})
			if err != nil {
				return err
			}
			for _, s := range []*side{owner, guest} {
				// The state store tells the Olm machine the room is
				// encrypted, as a client's sync would.
				if err := s.e2e.state.SetEncryptionEvent(ctx, roomID, &event.EncryptionEventContent{Algorithm: id.AlgorithmMegolmV1}); err != nil {
					return err
				}
			}
			return nil
		}},
		{name: "encrypted room: message " + owner.label + " -> " + guest.label, need: joined, run: func(ctx context.Context) error {
			return encryptedMessage(ctx, p, owner, guest, roomID)
		}},
		{name: "encrypted room: message " + guest.label + " -> " + owner.label, need: joined, run: func(ctx context.Context) error {
			return encryptedMessage(ctx, p, guest, owner, roomID)
		}},
	}
}

func (s *side) startEncryption(ctx context.Context) error {
	state := mautrix.NewMemoryStateStore()
	cs, ok := state.(crypto.StateStore)
	if !ok {
		return errors.New("mautrix's memory state store is no crypto.StateStore")
	}
	mach := crypto.NewOlmMachine(s.cli, nil, crypto.NewMemoryStore(nil), cs)
	if err := mach.Load(ctx); err != nil {
		return fmt.Errorf("olm account for %s: %w", s.label, err)
	}
	if err := mach.ShareKeys(ctx, -1); err != nil {
		return fmt.Errorf("upload keys on %s: %w", s.label, err)
	}
	s.e2e = &encryption{mach: mach, state: state}
	return s.syncEncryption(ctx)
}

// syncEncryption hands one /sync of s to its Olm machine: to-device
// messages (room keys), device list changes, one-time key counts.
func (s *side) syncEncryption(ctx context.Context) error {
	resp, err := s.cli.SyncRequest(ctx, 0, s.e2e.since, "", false, "")
	if err != nil {
		return fmt.Errorf("/sync on %s: %w", s.label, err)
	}
	s.e2e.mach.ProcessSyncResponse(ctx, resp, s.e2e.since)
	s.e2e.since = resp.NextBatch
	return nil
}

// encryptedMessage shares from's Megolm session with to's device, sends
// an encrypted text and waits for to to receive the room key and decrypt
// the message.
func encryptedMessage(ctx context.Context, p scenarioParams, from, to *side, roomID id.RoomID) error {
	if err := from.e2e.mach.ShareGroupSession(ctx, roomID, []id.UserID{from.cli.UserID, to.cli.UserID}); err != nil {
		return fmt.Errorf("%s shares a room key with %s (keys/query, keys/claim, to-device): %w", from.label, to.cli.UserID, err)
	}
	body := "secret from " + from.label + " " + randomHex(4)
	enc, err := from.e2e.mach.EncryptMegolmEvent(ctx, roomID, event.EventMessage, &event.MessageEventContent{MsgType: event.MsgText, Body: body})
	if err != nil {
		return fmt.Errorf("encrypt on %s: %w", from.label, err)
	}
	sent, err := from.cli.SendMessageEvent(ctx, roomID, event.EventEncrypted, enc)
	if err != nil {
		return fmt.Errorf("send m.room.encrypted on %s: %w", from.label, err)
	}
	// The room key comes to to's device as an Olm-encrypted to-device
	// message, through the two servers.
	if err := poll.Wait(p.Wait, func() error {
		if err := to.syncEncryption(ctx); err != nil {
			return err
		}
		sess, err := to.e2e.mach.CryptoStore.GetGroupSession(ctx, roomID, enc.SessionID)
		if err != nil {
			return fmt.Errorf("group session on %s: %w", to.label, err)
		}
		if sess == nil {
			return fmt.Errorf("%s's device has not received %s's room key (session %s) by to-device", to.label, from.label, enc.SessionID)
		}
		return nil
	}); err != nil {
		return err
	}
	return poll.Wait(p.Wait, func() error {
		ev, err := to.cli.GetEvent(ctx, roomID, sent.EventID)
		if err != nil {
			return fmt.Errorf("event %s on %s: %w", sent.EventID, to.label, err)
		}
		if err := ev.Content.ParseRaw(ev.Type); err != nil {
			return fmt.Errorf("content of %s on %s: %w", sent.EventID, to.label, err)
		}
		dec, err := to.e2e.mach.DecryptMegolmEvent(ctx, ev)
		if err != nil {
			return fmt.Errorf("decrypt %s on %s: %w", sent.EventID, to.label, err)
		}
		if dec.Content.Parsed == nil {
			if err := dec.Content.ParseRaw(dec.Type); err != nil {
				return fmt.Errorf("decrypted content of %s: %w", sent.EventID, err)
			}
		}
		if got := dec.Content.AsMessage().Body; got != body {
			return fmt.Errorf("%s decrypted %q, want %q", to.label, got, body)
		}
		return nil
	})
}
