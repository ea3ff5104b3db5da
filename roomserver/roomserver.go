// Package roomserver owns rooms: the event store, state snapshots, forward
// extremities, memberships and aliases. Events come in on the
// InputRoomEvent stream (see internal/input); accepted ones go out on
// OutputRoomEvent with their state delta. Other components use it through
// rsapi.API; only setup imports this package.
package roomserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/sirupsen/logrus"
	"github.com/tidwall/gjson"

	"myelin/internal/bus"
	"myelin/internal/signing"
	"myelin/internal/sqldb"
	rsapi "myelin/roomserver/api"
	"myelin/roomserver/internal/input"
	"myelin/roomserver/internal/perform"
	"myelin/roomserver/storage"
)

// Roomserver implements rsapi.API in this process.
type Roomserver struct {
	*InputClient
	// Performer runs joins, leaves, invites, knocks, kicks, bans and
	// upgrades through the InputClient, as any other producer would.
	*perform.Performer
	store   *storage.Storage
	inputer *input.Inputer
	delayed *delayed
	log     *logrus.Entry
	// aliases asks an alias's own server about it (nil: local only).
	aliases    AliasResolver
	serverName spec.ServerName
}

var _ rsapi.API = (*Roomserver)(nil)

// Federation is what the roomserver asks of other servers for rooms it is
// not in (make/send join, leave and knock, invites): the federationapi
// implements it.
type Federation = perform.Federation

// AliasResolver asks another server which room one of its aliases names
// (spec: GET /_matrix/federation/v1/query/directory). The Federation given
// to WithFederation may implement it.
type AliasResolver interface {
	QueryRoomAlias(ctx context.Context, server spec.ServerName, alias string) (roomID string, err error)
}

// Option adds to what New wires.
type Option func(*options)

type options struct {
	fed        Federation
	profile    perform.ProfileFunc
	input      InputConfig
	keyValid   perform.KeyValidityFunc
	cacheBytes int64
}

// WithCacheBytes bounds what the caches of events and room state hold
// (storage.DefaultCacheBytes without it).
func WithCacheBytes(n int64) Option {
	return func(o *options) { o.cacheBytes = n }
}

// InputConfig tunes event input (see input.Config), named here for the
// packages that wire the roomserver.
type InputConfig = input.Config

// WithInput tunes event input; its Fetcher (the federationapi's) gets what
// federated events need from other servers. Without it the input takes
// local events and complete PDUs only.
func WithInput(c InputConfig) Option { return func(o *options) { o.input = c } }

// WithFederation lets joins, knocks and leaves of rooms this server is not
// in go through other servers. Without it they are refused as rooms with
// no known servers.
func WithFederation(f Federation) Option { return func(o *options) { o.fed = f } }

// WithProfiles gives the display name and avatar that the member events of
// a user's joins and invites carry.
func WithProfiles(f func(ctx context.Context, userID string) (displayName, avatarURL string, err error)) Option {
	return func(o *options) { o.profile = f }
}

// WithKeyValidity sets how an identity server's key is confirmed before a
// third-party invite signed with it becomes an invite.
func WithKeyValidity(f func(ctx context.Context, validityURL, publicKey string) (bool, error)) Option {
	return func(o *options) { o.keyValid = f }
}

// New opens the roomserver's storage (running migrations).
func New(ctx context.Context, db *sqldb.DB, b *bus.Bus, key *signing.Key, log *logrus.Entry, opts ...Option) (*Roomserver, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	store, err := storage.Open(ctx, db, o.cacheBytes)
	if err != nil {
		return nil, fmt.Errorf("roomserver storage: %w", err)
	}
	ic, err := NewInputClient(b)
	if err != nil {
		return nil, err
	}
	r := &Roomserver{
		InputClient: ic,
		store:       store,
		inputer:     input.New(store, b, key, log, o.input),
		log:         log,
		serverName:  key.ServerName,
		delayed:     newDelayed(),
	}
	r.aliases, _ = o.fed.(AliasResolver)
	perf := perform.New(r, key, o.fed, o.input.Fetcher, o.profile, log)
	perf.SetKeyValidity(o.keyValid)
	r.Performer = perf
	return r, nil
}

// Start consumes the input stream until ctx ends.
func (r *Roomserver) Start(ctx context.Context) error {
	if err := r.inputer.Start(ctx); err != nil {
		return err
	}
	r.delayed.started.Store(true)
	go r.runDelayed(ctx)
	return nil
}

// Wait waits for input processing and the delayed events' timer to stop
// after ctx ended.
func (r *Roomserver) Wait() {
	if r.delayed.started.Load() {
		<-r.delayed.done
	}
	r.inputer.Wait()
	_ = r.InputClient.Close()
}

func mapNotFound(err error, nf error) error {
	if errors.Is(err, storage.ErrNotFound) {
		return nf
	}
	return err
}

// RoomVersion implements rsapi.API.
func (r *Roomserver) RoomVersion(ctx context.Context, roomID string) (gmsl.RoomVersion, error) {
	room, err := r.store.Room(ctx, roomID)
	if err != nil {
		return "", mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	return room.Version, nil
}

// LatestEvents returns the room's forward extremities and the greatest
// depth of its events: what a new event of the room would follow.
func (r *Roomserver) LatestEvents(ctx context.Context, roomID string) ([]string, int64, error) {
	room, err := r.store.Room(ctx, roomID)
	if err != nil {
		return nil, 0, mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	evs, err := r.store.EventsByNID(ctx, room.Latest)
	if err != nil {
		return nil, 0, fmt.Errorf("latest events of %s: %w", roomID, err)
	}
	ids := make([]string, len(evs))
	for i, e := range evs {
		ids[i] = e.ID
	}
	return ids, room.MaxDepth, nil
}

// CurrentState implements rsapi.API.
func (r *Roomserver) CurrentState(ctx context.Context, roomID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error) {
	room, err := r.store.Room(ctx, roomID)
	if err != nil {
		return nil, mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	return r.stateAt(ctx, room.Snapshot, tuples)
}

func (r *Roomserver) stateAt(ctx context.Context, snapshot int64, tuples []gmsl.StateKeyTuple) ([]gmsl.PDU, error) {
	var nids []int64
	if len(tuples) == 0 {
		entries, err := r.store.StateEntries(ctx, snapshot)
		if err != nil {
			return nil, err
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Tuple < entries[j].Tuple })
		for _, e := range entries {
			nids = append(nids, e.Event)
		}
	} else {
		tn, err := r.store.TupleNIDs(ctx, tuples)
		if err != nil {
			return nil, err
		}
		ids := make([]int64, 0, len(tn))
		for _, t := range tuples {
			if n, ok := tn[t]; ok {
				ids = append(ids, n)
			}
		}
		found, err := r.store.StateLookup(ctx, snapshot, ids)
		if err != nil {
			return nil, err
		}
		for _, n := range ids {
			if e, ok := found[n]; ok {
				nids = append(nids, e)
			}
		}
	}
	evs, err := r.store.EventsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	out := make([]gmsl.PDU, len(evs))
	for i, e := range evs {
		out[i] = e.PDU
	}
	return out, nil
}

// StateEvent implements rsapi.API.
func (r *Roomserver) StateEvent(ctx context.Context, roomID, evType, stateKey string) (gmsl.PDU, error) {
	evs, err := r.CurrentState(ctx, roomID, gmsl.StateKeyTuple{EventType: evType, StateKey: stateKey})
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 {
		return nil, rsapi.ErrStateNotFound
	}
	return evs[0], nil
}

// StateBefore implements rsapi.API.
func (r *Roomserver) StateBefore(ctx context.Context, eventID string, tuples ...gmsl.StateKeyTuple) ([]gmsl.PDU, error) {
	evs, err := r.store.EventsByID(ctx, []string{eventID})
	if err != nil {
		return nil, err
	}
	if len(evs) == 0 || evs[0].Rejected {
		return nil, rsapi.ErrEventNotFound
	}
	return r.stateAt(ctx, evs[0].StateBefore, tuples)
}

// Events implements rsapi.API.
func (r *Roomserver) Events(ctx context.Context, eventIDs []string) ([]gmsl.PDU, error) {
	evs, err := r.store.EventsByID(ctx, eventIDs)
	if err != nil {
		return nil, err
	}
	out := make([]gmsl.PDU, 0, len(evs))
	for _, e := range evs {
		if !e.Rejected {
			out = append(out, e.PDU)
		}
	}
	return out, nil
}

// Membership implements rsapi.API.
func (r *Roomserver) Membership(ctx context.Context, roomID, userID string) (*rsapi.Membership, error) {
	room, err := r.store.Room(ctx, roomID)
	if err != nil {
		return nil, mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	m, nid, err := r.store.Membership(ctx, room.NID, userID)
	if err != nil {
		return nil, err
	}
	out := &rsapi.Membership{RoomID: roomID, UserID: userID, Membership: m}
	if nid != 0 {
		evs, err := r.store.EventsByNID(ctx, []int64{nid})
		if err != nil {
			return nil, err
		}
		out.EventID = evs[0].ID
	}
	return out, nil
}

// ServerJoined implements rsapi.API.
func (r *Roomserver) ServerJoined(ctx context.Context, roomID string, server spec.ServerName) (bool, error) {
	room, err := r.store.Room(ctx, roomID)
	if err != nil {
		return false, mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	return r.store.ServerJoined(ctx, room.NID, string(server))
}

// UserRooms implements rsapi.API.
func (r *Roomserver) UserRooms(ctx context.Context, userID string, memberships ...string) ([]string, error) {
	return r.store.UserRooms(ctx, userID, memberships)
}

// TxnEvent implements rsapi.API.
func (r *Roomserver) TxnEvent(ctx context.Context, txn rsapi.TxnID) (string, error) {
	return r.store.TxnEvent(ctx, txn.SessionID, txn.Key())
}

// SetAlias implements rsapi.API.
func (r *Roomserver) SetAlias(ctx context.Context, alias, roomID, creator string) error {
	if _, err := r.store.Room(ctx, roomID); err != nil {
		return mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	err := r.store.SetAlias(ctx, alias, roomID, creator)
	if sqldb.IsUniqueViolation(err) {
		return rsapi.ErrAliasInUse
	}
	return err
}

// ResolveAlias implements rsapi.API.
// An alias of another server is asked of that server.
func (r *Roomserver) ResolveAlias(ctx context.Context, alias string) (string, error) {
	roomID, _, err := r.store.Alias(ctx, alias)
	if !errors.Is(err, storage.ErrNotFound) || r.aliases == nil {
		return roomID, mapNotFound(err, rsapi.ErrAliasNotFound)
	}
	_, server, ok := strings.Cut(alias, ":")
	if !ok || spec.ServerName(server) == r.serverName {
		return "", rsapi.ErrAliasNotFound
	}
	roomID, err = r.aliases.QueryRoomAlias(ctx, spec.ServerName(server), alias)
	if err != nil {
		var coded interface{ MatrixErrCode() string }
		if errors.As(err, &coded) && coded.MatrixErrCode() == "M_NOT_FOUND" {
			return "", rsapi.ErrAliasNotFound
		}
		return "", fmt.Errorf("resolve %s through %s: %w", alias, server, err)
	}
	return roomID, nil
}

// AliasCreator implements rsapi.API.
func (r *Roomserver) AliasCreator(ctx context.Context, alias string) (string, error) {
	_, creator, err := r.store.Alias(ctx, alias)
	return creator, mapNotFound(err, rsapi.ErrAliasNotFound)
}

// RemoveAlias implements rsapi.API.
func (r *Roomserver) RemoveAlias(ctx context.Context, alias string) error {
	return mapNotFound(r.store.RemoveAlias(ctx, alias), rsapi.ErrAliasNotFound)
}

// AddReport implements rsapi.API.
func (r *Roomserver) AddReport(ctx context.Context, rep rsapi.Report) (int64, error) {
	return r.store.AddReport(ctx, rep)
}

// Reports implements rsapi.API.
func (r *Roomserver) Reports(ctx context.Context, q rsapi.ReportsQuery) ([]rsapi.Report, int, error) {
	return r.store.Reports(ctx, q)
}

// Report implements rsapi.API.
func (r *Roomserver) Report(ctx context.Context, id int64) (*rsapi.Report, error) {
	rep, err := r.store.Report(ctx, id)
	return rep, mapNotFound(err, rsapi.ErrReportNotFound)
}

// DeleteReport implements rsapi.API.
func (r *Roomserver) DeleteReport(ctx context.Context, id int64) error {
	return mapNotFound(r.store.DeleteReport(ctx, id), rsapi.ErrReportNotFound)
}

// RoomAliases implements rsapi.API.
func (r *Roomserver) RoomAliases(ctx context.Context, roomID string) ([]string, error) {
	return r.store.RoomAliases(ctx, roomID)
}

// SetPublished implements rsapi.API.
func (r *Roomserver) SetPublished(ctx context.Context, roomID string, published bool) error {
	if _, err := r.store.Room(ctx, roomID); err != nil {
		return mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	return r.store.SetPublished(ctx, roomID, published)
}

// IsPublished implements rsapi.API.
func (r *Roomserver) IsPublished(ctx context.Context, roomID string) (bool, error) {
	return r.store.IsPublished(ctx, roomID)
}

// summaryTuples is the state a public room summary is made of.
var summaryTuples = []gmsl.StateKeyTuple{
	{EventType: spec.MRoomName}, {EventType: spec.MRoomTopic}, {EventType: spec.MRoomCanonicalAlias},
	{EventType: "m.room.avatar"}, {EventType: spec.MRoomJoinRules}, {EventType: spec.MRoomHistoryVisibility},
	{EventType: spec.MRoomGuestAccess}, {EventType: spec.MRoomCreate},
}

// EventNearTime implements rsapi.API.
func (r *Roomserver) EventNearTime(ctx context.Context, roomID string, ts int64, backward bool) (*rsapi.TimeEvent, error) {
	room, err := r.store.Room(ctx, roomID)
	if err != nil {
		return nil, mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	id, ots, err := r.store.EventNearTime(ctx, room.NID, ts, backward)
	if err != nil {
		return nil, mapNotFound(err, rsapi.ErrEventNotFound)
	}
	return &rsapi.TimeEvent{EventID: id, OriginServerTS: ots}, nil
}

// PublicRooms implements rsapi.API: the published rooms matching q's
// filter, paged by offset tokens ("o<n>").
func (r *Roomserver) PublicRooms(ctx context.Context, q rsapi.PublicRoomsQuery) (*rsapi.PublicRoomsPage, error) {
	rooms, err := r.publishedRooms(ctx)
	if err != nil {
		return nil, err
	}
	// No application service bridges a network here: a named network
	// has no rooms.
	if q.ThirdPartyInstanceID != "" {
		rooms = nil
	}
	term := strings.ToLower(q.Filter.GenericSearchTerm)
	matched := rooms[:0:0]
	for _, pr := range rooms {
		if term != "" && !strings.Contains(strings.ToLower(pr.Name+"\x00"+pr.Topic+"\x00"+pr.CanonicalAlias), term) {
			continue
		}
		if q.Filter.RoomTypes != nil && !roomTypeWanted(q.Filter.RoomTypes, pr.RoomType) {
			continue
		}
		matched = append(matched, pr)
	}
	offset := 0
	if q.Since != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(q.Since, "o"))
		if err != nil || n < 0 || !strings.HasPrefix(q.Since, "o") {
			return nil, rsapi.ErrBadSince
		}
		offset = min(n, len(matched))
	}
	end := len(matched)
	if q.Limit > 0 {
		end = min(offset+q.Limit, len(matched))
	}
	page := &rsapi.PublicRoomsPage{Chunk: matched[offset:end], Total: len(matched)}
	if end < len(matched) {
		page.NextBatch = "o" + strconv.Itoa(end)
	}
	if offset > 0 {
		page.PrevBatch = "o" + strconv.Itoa(max(offset-max(q.Limit, 0), 0))
	}
	return page, nil
}

// roomTypeWanted matches a room's type against a filter's room_types, where
// null stands for rooms without a type.
func roomTypeWanted(types []*string, roomType string) bool {
	for _, t := range types {
		if (t == nil && roomType == "") || (t != nil && *t == roomType) {
			return true
		}
	}
	return false
}

// summarise fills pr from the room's state among summaryTuples.
func summarise(pr *rsapi.PublicRoom, state []gmsl.PDU) {
	for _, ev := range state {
		c := gjson.ParseBytes(ev.Content())
		switch ev.Type() {
		case spec.MRoomName:
			pr.Name = c.Get("name").String()
		case spec.MRoomTopic:
			pr.Topic = c.Get("topic").String()
		case spec.MRoomCanonicalAlias:
			pr.CanonicalAlias = c.Get("alias").String()
		case "m.room.avatar":
			pr.AvatarURL = c.Get("url").String()
		case spec.MRoomJoinRules:
			pr.JoinRule = c.Get("join_rule").String()
		case spec.MRoomHistoryVisibility:
			pr.WorldReadable = c.Get("history_visibility").String() == "world_readable"
		case spec.MRoomGuestAccess:
			pr.GuestCanJoin = c.Get("guest_access").String() == "can_join"
		case spec.MRoomCreate:
			pr.RoomType = c.Get("type").String()
		}
	}
}

// RoomSummary implements rsapi.API: the room's summary as the space
// hierarchy shows it, with its m.space.child events that name servers
// (spec: an m.space.child without via is not a child).
func (r *Roomserver) RoomSummary(ctx context.Context, roomID string) (*rsapi.RoomSummary, error) {
	room, err := r.store.Room(ctx, roomID)
	if err != nil {
		return nil, mapNotFound(err, rsapi.ErrRoomNotFound)
	}
	state, err := r.stateAt(ctx, room.Snapshot, append(slices.Clip(summaryTuples), gmsl.StateKeyTuple{EventType: spec.MRoomEncryption}))
	if err != nil {
		return nil, err
	}
	joined, err := r.store.JoinedCount(ctx, room.NID)
	if err != nil {
		return nil, err
	}
	sum := &rsapi.RoomSummary{PublicRoom: rsapi.PublicRoom{RoomID: roomID, NumJoinedMembers: joined}, RoomVersion: string(room.Version), ChildrenState: []json.RawMessage{}}
	summarise(&sum.PublicRoom, state)
	for _, ev := range state {
		c := gjson.ParseBytes(ev.Content())
		switch ev.Type() {
		case spec.MRoomEncryption:
			sum.Encryption = c.Get("algorithm").String()
		case spec.MRoomJoinRules:
			// Restricted rooms: the rooms whose members may join (MSC3083).
			for _, a := range c.Get("allow").Array() {
				if a.Get("type").String() == "m.room_membership" && a.Get("room_id").Type == gjson.String {
					sum.AllowedRoomIDs = append(sum.AllowedRoomIDs, a.Get("room_id").Str)
				}
			}
		}
	}
	tuples, err := r.store.TupleNIDsOfType(ctx, spaceChild)
	if err != nil {
		return nil, err
	}
	found, err := r.store.StateLookup(ctx, room.Snapshot, tuples)
	if err != nil {
		return nil, err
	}
	nids := make([]int64, 0, len(found))
	for _, n := range found {
		nids = append(nids, n)
	}
	children, err := r.store.EventsByNID(ctx, nids)
	if err != nil {
		return nil, err
	}
	sort.Slice(children, func(i, j int) bool { return *children[i].PDU.StateKey() < *children[j].PDU.StateKey() })
	for _, ch := range children {
		ev := ch.PDU
		if len(gjson.GetBytes(ev.Content(), "via").Array()) == 0 {
			continue
		}
		raw, err := json.Marshal(map[string]any{
			"type": ev.Type(), "state_key": *ev.StateKey(), "content": json.RawMessage(ev.Content()),
			"sender": string(ev.SenderID()), "origin_server_ts": int64(ev.OriginServerTS()),
		})
		if err != nil {
			return nil, err
		}
		sum.ChildrenState = append(sum.ChildrenState, raw)
	}
	return sum, nil
}

// spaceChild is the state event type naming a space's children.
const spaceChild = "m.space.child"

// publishedRooms summarises every published room, most joined first.
func (r *Roomserver) publishedRooms(ctx context.Context) ([]rsapi.PublicRoom, error) {
	published, err := r.store.PublishedRooms(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]rsapi.PublicRoom, 0, len(published))
	for roomID, joined := range published {
		state, err := r.CurrentState(ctx, roomID, summaryTuples...)
		if errors.Is(err, rsapi.ErrRoomNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		pr := rsapi.PublicRoom{RoomID: roomID, NumJoinedMembers: joined}
		summarise(&pr, state)
		out = append(out, pr)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].NumJoinedMembers != out[j].NumJoinedMembers {
			return out[i].NumJoinedMembers > out[j].NumJoinedMembers
		}
		return out[i].RoomID < out[j].RoomID
	})
	return out, nil
}

// joinedHere reports whether a user of this server is joined to the room.
func (r *Roomserver) joinedHere(ctx context.Context, roomNID int64) bool {
	here, err := r.store.ServerJoined(ctx, roomNID, string(r.serverName))
	return err == nil && here
}

// SearchUsers implements rsapi.API. It reads memberships and join rules
// straight from the rooms' state; a dedicated index can replace it when
// directories grow large.
func (r *Roomserver) SearchUsers(ctx context.Context, searcher, term string, limit int) ([]rsapi.DirectoryUser, bool, error) {
	rooms := map[int64]bool{}
	shared, err := r.store.SharedRoomNIDs(ctx, searcher)
	if err != nil {
		return nil, false, err
	}
	for _, n := range shared {
		rooms[n] = true
	}
	all, err := r.store.AllRooms(ctx)
	if err != nil {
		return nil, false, err
	}
	// Rooms anyone can see into: a public join rule or world-readable
	// history (as Synapse's directory counts them).
	tuples, err := r.store.TupleNIDs(ctx, []gmsl.StateKeyTuple{{EventType: spec.MRoomJoinRules}, {EventType: spec.MRoomHistoryVisibility}})
	if err != nil {
		return nil, false, err
	}
	var lookups []int64
	for _, t := range tuples {
		lookups = append(lookups, t)
	}
	publicRooms := map[int64]bool{}
	for roomNID, snap := range all {
		if snap == 0 || len(lookups) == 0 {
			continue
		}
		found, err := r.store.StateLookup(ctx, snap, lookups)
		if err != nil {
			continue
		}
		var evNIDs []int64
		for _, n := range found {
			evNIDs = append(evNIDs, n)
		}
		evs, err := r.store.EventsByNID(ctx, evNIDs)
		if err != nil {
			continue
		}
		public := false
		for _, ev := range evs {
			rule, _ := ev.PDU.JoinRule()
			hv, _ := ev.PDU.HistoryVisibility()
			if (ev.PDU.Type() == spec.MRoomJoinRules && rule == spec.Public) ||
				(ev.PDU.Type() == spec.MRoomHistoryVisibility && hv == gmsl.HistoryVisibilityWorldReadable) {
				public = true
			}
		}
		// A room this server has left is no longer followed here: its
		// members as last seen are not the room's members now.
		if public && (rooms[roomNID] || r.joinedHere(ctx, roomNID)) {
			rooms[roomNID], publicRooms[roomNID] = true, true
		}
	}
	nids := make([]int64, 0, len(rooms))
	for n := range rooms {
		nids = append(nids, n)
	}
	memberNIDs, err := r.store.JoinedMemberEvents(ctx, nids)
	if err != nil {
		return nil, false, err
	}
	members, err := r.store.EventsByNID(ctx, memberNIDs)
	if err != nil {
		return nil, false, err
	}
	term = strings.ToLower(term)
	seen := map[string]bool{}
	var out []rsapi.DirectoryUser
	for _, ev := range members {
		userID := *ev.PDU.StateKey()
		// Searchers find themselves only as others do, through a room
		// anyone can see into (as Synapse: sharing a private room with
		// oneself does not count).
		if seen[userID] || (userID == searcher && !publicRooms[ev.RoomNID]) {
			continue
		}
		c := gjson.ParseBytes(ev.PDU.Content())
		u := rsapi.DirectoryUser{UserID: userID, DisplayName: c.Get("displayname").String(), AvatarURL: c.Get("avatar_url").String()}
		if !strings.Contains(strings.ToLower(u.UserID), term) && !strings.Contains(strings.ToLower(u.DisplayName), term) {
			continue
		}
		seen[userID] = true
		out = append(out, u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UserID < out[j].UserID })
	if limit > 0 && len(out) > limit {
		return out[:limit], true, nil
	}
	return out, false, nil
}

// earliestScan is how many of a room's oldest events BackfillPoint looks at.
const earliestScan = 50

// BackfillPoint returns where a backfill of roomID starts: from, the prev
// events of its oldest events here that this server lacks or holds only
// as outliers (its backward extremities), and earliest, the events that
// refer to them. complete says there is nothing to backfill: the room's
// create event is in its timeline here (a room created here, or whose
// history was backfilled to its start), or the room is not known here.
func (r *Roomserver) BackfillPoint(ctx context.Context, roomID string) (from, earliest []string, complete bool, err error) {
	room, err := r.store.Room(ctx, roomID)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && len(room.Latest) == 0) {
		return nil, nil, true, nil
	}
	if err != nil {
		return nil, nil, false, err
	}
	create, err := r.stateAt(ctx, room.Snapshot, []gmsl.StateKeyTuple{{EventType: spec.MRoomCreate}})
	if err != nil {
		return nil, nil, false, fmt.Errorf("create event of %s: %w", roomID, err)
	}
	if len(create) > 0 {
		evs, err := r.store.EventsByID(ctx, []string{create[0].EventID()})
		if err != nil {
			return nil, nil, false, err
		}
		if len(evs) == 1 && !evs[0].Outlier {
			return nil, nil, true, nil
		}
	}
	oldest, err := r.store.EarliestEvents(ctx, room.NID, earliestScan)
	if err != nil {
		return nil, nil, false, err
	}
	var prevs []string
	seen := map[string]bool{}
	for _, e := range oldest {
		for _, p := range e.PDU.PrevEventIDs() {
			if !seen[p] {
				seen[p] = true
				prevs = append(prevs, p)
			}
		}
	}
	known, err := r.store.EventsByID(ctx, prevs)
	if err != nil {
		return nil, nil, false, err
	}
	have := map[string]bool{}
	for _, e := range known {
		if !e.Outlier {
			have[e.ID] = true
		}
	}
	missing := map[string]bool{}
	for _, p := range prevs {
		if !have[p] {
			missing[p] = true
			from = append(from, p)
		}
	}
	for _, e := range oldest {
		for _, p := range e.PDU.PrevEventIDs() {
			if missing[p] {
				earliest = append(earliest, e.ID)
				break
			}
		}
	}
	return from, earliest, false, nil
}
