package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/event"
	"maunium.net/go/mautrix/id"

	"myelin/internal/poll"
)

// ephemeralSteps: in a room of owner's server joined from guest's, each
// user's typing notice and read receipt reach the other's /sync (the
// m.typing and m.receipt EDUs, both ways).
func ephemeralSteps(p scenarioParams, owner, guest *side, need string) []step {
	var roomID id.RoomID
	var lastMessage id.EventID
	prefix := "ephemeral room: "
	joined := prefix + "created on " + owner.label + ", joined from " + guest.label
	out := []step{{name: joined, need: need, run: func(ctx context.Context) (err error) {
		if roomID, err = sharedRoom(ctx, p, owner, guest, nil); err != nil {
			return err
		}
		sent, err := owner.cli.SendText(ctx, roomID, "read me")
		if err != nil {
			return fmt.Errorf("send on %s: %w", owner.label, err)
		}
		lastMessage = sent.EventID
		return nil
	}}}
	for _, dir := range [][2]*side{{owner, guest}, {guest, owner}} {
		from, to := dir[0], dir[1]
		out = append(out,
			step{name: prefix + "typing " + from.label + " -> " + to.label, need: joined, run: func(ctx context.Context) error {
				return seenEphemeral(ctx, p, to, roomID, event.EphemeralEventTyping,
					func() error {
						_, err := from.cli.UserTyping(ctx, roomID, true, 30*time.Second)
						return err
					},
					func(ev *event.Event) bool {
						users, _ := ev.Content.Raw["user_ids"].([]any)
						return slices.Contains(users, any(from.cli.UserID.String()))
					})
			}},
			step{name: prefix + "read receipt " + from.label + " -> " + to.label, need: joined, run: func(ctx context.Context) error {
				return seenEphemeral(ctx, p, to, roomID, event.EphemeralEventReceipt,
					func() error {
						return from.cli.SendReceipt(ctx, roomID, lastMessage, event.ReceiptTypeRead, nil)
					},
					func(ev *event.Event) bool {
						byType, _ := ev.Content.Raw[lastMessage.String()].(map[string]any)
						users, _ := byType[string(event.ReceiptTypeRead)].(map[string]any)
						_, ok := users[from.cli.UserID.String()]
						return ok
					})
			}},
		)
	}
	return out
}

// seenEphemeral takes to's sync position, does what, and waits for an
// ephemeral event of typ in the room that match accepts to reach to's
// /sync after that position.
func seenEphemeral(ctx context.Context, p scenarioParams, to *side, roomID id.RoomID, typ event.Type, what func() error, match func(*event.Event) bool) error {
	first, err := to.cli.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		return fmt.Errorf("/sync on %s: %w", to.label, err)
	}
	if err := what(); err != nil {
		return err
	}
	var seen []string
	return poll.Wait(p.Wait, func() error {
		resp, err := to.cli.SyncRequest(ctx, 0, first.NextBatch, "", false, "")
		if err != nil {
			return fmt.Errorf("/sync on %s: %w", to.label, err)
		}
		if room, ok := resp.Rooms.Join[roomID]; ok {
			for _, ev := range room.Ephemeral.Events {
				if ev.Type == typ && match(ev) {
					return nil
				}
				seen = append(seen, fmt.Sprintf("%s %v", ev.Type.Type, ev.Content.Raw))
			}
		}
		return fmt.Errorf("%s's /sync shows no matching %s in %s (ephemeral events seen: %v)", to.label, typ.Type, roomID, seen)
	})
}

// sharedRoom makes a public room on owner's server, with initial state,
// and has guest join it over federation.
func sharedRoom(ctx context.Context, p scenarioParams, owner, guest *side, initial []*event.Event) (id.RoomID, error) {
	resp, err := owner.cli.CreateRoom(ctx, &mautrix.ReqCreateRoom{
		Preset: "public_chat", RoomVersion: id.RoomVersion(p.RoomVersion), InitialState: initial,
	})
	if err != nil {
		return "", fmt.Errorf("createRoom on %s: %w", owner.label, err)
	}
	if _, err := guest.cli.JoinRoom(ctx, resp.RoomID.String(), &mautrix.ReqJoinRoom{Via: []string{owner.name}}); err != nil {
		return "", fmt.Errorf("%s joins %s: %w", guest.label, resp.RoomID, err)
	}
	for _, s := range []*side{owner, guest} {
		if err := s.waitJoined(ctx, p.Wait, resp.RoomID, owner.cli.UserID, guest.cli.UserID); err != nil {
			return "", err
		}
	}
	return resp.RoomID, nil
}
