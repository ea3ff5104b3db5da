package userapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"myelin/internal/bus"
	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

const (
	// defaultKeysTimeout bounds the federation requests of a /keys/query
	// or /keys/claim that gives no timeout (the spec's default, 10 s).
	defaultKeysTimeout = 10 * time.Second
	// maxKeysTimeout caps what a client may ask for.
	maxKeysTimeout = 30 * time.Second
	// keysFanOut bounds the servers asked at once for one request.
	keysFanOut = 8
	// keysCatchUp bounds how long a /keys/query for remote users waits
	// for the membership events before it.
	keysCatchUp = 2 * time.Second
	// resyncTimeout bounds one fetch of a device list (resync.go).
	resyncTimeout = 10 * time.Second
)

// SetRemoteKeys gives the userapi its way to other servers' keys (the
// federationapi, made after the userapi). Without it, users of other
// servers are listed in failures.
func (u *UserAPI) SetRemoteKeys(r uapi.RemoteKeys) { u.remote = r }

// UploadKeys stores a device's keys; a change of its device keys moves the
// user's device list on, which is announced.
func (u *UserAPI) UploadKeys(ctx context.Context, req uapi.UploadKeysRequest) (map[string]int, error) {
	var keys []storage.OneTimeKey
	add := func(m map[string]json.RawMessage, fallback bool) {
		for id, k := range m {
			alg, _, _ := strings.Cut(id, ":")
			keys = append(keys, storage.OneTimeKey{KeyID: id, Algorithm: alg, JSON: string(k), Fallback: fallback})
		}
	}
	add(req.OneTimeKeys, false)
	add(req.FallbackKeys, true)
	change, err := u.store.UploadKeys(ctx, req.UserID, req.DeviceID, string(req.DeviceKeys), keys)
	if errors.Is(err, storage.ErrNoDevice) {
		// Deleted since its token was checked: as if the token had been
		// checked a moment later.
		return nil, uapi.ErrUnknownToken
	}
	if err != nil {
		return nil, err
	}
	if change != nil {
		upd := uapi.DeviceListUpdate{Keys: req.DeviceKeys}
		if d, err := u.store.Device(ctx, req.UserID, req.DeviceID); err == nil {
			upd.DisplayName = d.DisplayName
		}
		if err := u.deviceListChanged(ctx, *change, upd); err != nil {
			return nil, err
		}
	}
	counts, err := u.store.KeyCounts(ctx, req.UserID, req.DeviceID)
	if err != nil {
		return nil, err
	}
	return counts.OneTime, nil
}

// KeyCounts implements uapi.Keys.
func (u *UserAPI) KeyCounts(ctx context.Context, userID, deviceID string) (*uapi.KeyCounts, error) {
	return u.store.KeyCounts(ctx, userID, deviceID)
}

// devicesOf lists the IDs of userID's devices among deviceIDs (all when
// nil), to know which a deletion removes.
func (u *UserAPI) devicesOf(ctx context.Context, userID string, deviceIDs []string) ([]string, error) {
	devs, err := u.store.Devices(ctx, userID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, d := range devs {
		if deviceIDs == nil || contains(deviceIDs, d.DeviceID) {
			out = append(out, d.DeviceID)
		}
	}
	return out, nil
}

// deleteDeviceKeys deletes the keys of deleted devices; each deletion is
// a device list change.
func (u *UserAPI) deleteDeviceKeys(ctx context.Context, userID string, deviceIDs []string) error {
	changes, err := u.store.DeleteDeviceKeys(ctx, userID, deviceIDs)
	if err != nil {
		return err
	}
	for _, c := range changes {
		if err := u.deviceListChanged(ctx, c, uapi.DeviceListUpdate{Deleted: true}); err != nil {
			return err
		}
	}
	return nil
}

// deviceAdded makes a new device a device list change (it has no keys
// yet, but it is listed: spec, "Tracking the device list for a user").
func (u *UserAPI) deviceAdded(ctx context.Context, dev *uapi.Device) error {
	c, err := u.store.DeviceAdded(ctx, dev.UserID, dev.DeviceID)
	if err != nil {
		return err
	}
	return u.deviceListChanged(ctx, c, uapi.DeviceListUpdate{DisplayName: dev.DisplayName})
}

// deviceListChanged tells /sync (and, through it, the users sharing a
// room) that a local user's device list moved, and the federationapi,
// which sends upd (completed here) to the servers sharing a room.
func (u *UserAPI) deviceListChanged(ctx context.Context, c storage.DeviceListChange, upd uapi.DeviceListUpdate) error {
	if err := u.announce(ctx, c.UserID, "device_lists", c.Pos); err != nil {
		return err
	}
	if u.bus == nil {
		return nil
	}
	upd.UserID, upd.DeviceID, upd.StreamID = c.UserID, c.DeviceID, c.Pos
	upd.PrevID = []int64{} // the first update has none, but the field is there
	if c.Prev > 0 {
		upd.PrevID = []int64{c.Prev}
	}
	data, err := json.Marshal(upd)
	if err != nil {
		return fmt.Errorf("encode device list update: %w", err)
	}
	msgID := "dl:" + strconv.FormatInt(c.Pos, 10)
	if err := u.bus.Publish(ctx, bus.NewMsg(bus.OutputDeviceListUpdate, data, msgID)); err != nil {
		return fmt.Errorf("publish device list update %d of %s: %w", c.Pos, c.UserID, err)
	}
	return nil
}

// withDisplayName adds unsigned.device_display_name to a device keys
// object, as /keys/query shows it (not covered by the signatures).
func withDisplayName(keys, name string) json.RawMessage {
	if name == "" {
		// Clients (and sytest) expect an unsigned object in any case.
		if gjson.Get(keys, "unsigned").Exists() {
			return json.RawMessage(keys)
		}
		out, err := sjson.SetRaw(keys, "unsigned", "{}")
		if err != nil {
			return json.RawMessage(keys)
		}
		return json.RawMessage(out)
	}
	out, err := sjson.Set(keys, "unsigned.device_display_name", name)
	if err != nil {
		return json.RawMessage(keys)
	}
	return json.RawMessage(out)
}

// keysOf fills resp with the keys of devs, keeping only the devices named
// in want (all when want is empty).
func keysOf(resp *uapi.QueryKeysResponse, userID string, devs []storage.DeviceKeys, want []string) {
	m := resp.DeviceKeys[userID]
	if m == nil {
		m = map[string]json.RawMessage{}
		resp.DeviceKeys[userID] = m
	}
	for _, d := range devs {
		if d.KeyJSON == "" || len(want) > 0 && !contains(want, d.DeviceID) {
			continue
		}
		m[d.DeviceID] = withDisplayName(d.KeyJSON, d.DisplayName)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func keysTimeout(t time.Duration) time.Duration {
	if t <= 0 {
		return defaultKeysTimeout
	}
	return min(t, maxKeysTimeout)
}

// byServer groups user IDs of other servers by server; local ones (and
// IDs without a server) are returned apart.
func (u *UserAPI) byServer(users []string) (local []string, remote map[string][]string) {
	remote = map[string][]string{}
	for _, id := range users {
		srv, ok := mxid.Server(id)
		if !ok || srv == u.serverName {
			local = append(local, id)
			continue
		}
		remote[srv] = append(remote[srv], id)
	}
	return local, remote
}

// failure is how a server that did not answer shows in failures.
func failure(err error) map[string]any {
	return map[string]any{"status": 503, "message": err.Error()}
}

// fanOut runs f for each server on at most keysFanOut workers, and waits
// for them. Once ctx ends, what is left fails at once (and is listed).
func fanOut(ctx context.Context, servers []string, f func(ctx context.Context, server string)) {
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(keysFanOut, len(servers)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for srv := range work {
				f(ctx, srv)
			}
		}()
	}
	for _, srv := range servers {
		work <- srv
	}
	close(work)
	wg.Wait()
}

func keysOfMap(m map[string][]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// QueryKeys answers /keys/query.
func (u *UserAPI) QueryKeys(ctx context.Context, req uapi.QueryKeysRequest) (*uapi.QueryKeysResponse, error) {
	resp := &uapi.QueryKeysResponse{DeviceKeys: map[string]map[string]json.RawMessage{}, Failures: map[string]any{}}
	local, remote := u.byServer(keysOfMap(req.DeviceKeys))
	if len(local) > 0 {
		// Two queries for any number of local users.
		devs, err := u.store.LocalDeviceKeysOf(ctx, local)
		if err != nil {
			return nil, err
		}
		cross, err := u.store.CrossSigningKeysOf(ctx, local)
		if err != nil {
			return nil, err
		}
		for _, id := range local {
			keysOf(resp, id, devs[id], req.DeviceKeys[id])
			addCrossSigning(resp, id, cross[id], id == req.Requester)
		}
	}
	if req.LocalOnly || len(remote) == 0 {
		return resp, u.withUserSignatures(ctx, resp, req.Requester)
	}
	// Whether a remote user shares a room with a local one (so its list is
	// cached, or fetched whole) is this component's view of membership:
	// let it catch up with the events that came before the query, such as
	// the join that made the room shared (bounded).
	if u.bus != nil && u.push.rooms != nil {
		u.catchUpEvents(ctx, keysCatchUp)
	}
	ctx, cancel := context.WithTimeout(ctx, keysTimeout(req.Timeout))
	defer cancel()
	var mu sync.Mutex
	fanOut(ctx, keysOfMap(remote), func(ctx context.Context, srv string) {
		part, err := u.queryServer(ctx, srv, remote[srv], req.DeviceKeys)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			u.log.WithError(err).WithField("server", srv).Debug("keys query failed")
			resp.Failures[srv] = failure(err)
			return
		}
		for uid, devs := range part.DeviceKeys {
			resp.DeviceKeys[uid] = devs
		}
		for uid, k := range part.MasterKeys {
			if resp.MasterKeys == nil {
				resp.MasterKeys = map[string]json.RawMessage{}
			}
			resp.MasterKeys[uid] = k
		}
		for uid, k := range part.SelfSigningKeys {
			if resp.SelfSigningKeys == nil {
				resp.SelfSigningKeys = map[string]json.RawMessage{}
			}
			resp.SelfSigningKeys[uid] = k
		}
	})
	return resp, u.withUserSignatures(ctx, resp, req.Requester)
}

// queryServer answers for the users of one other server: from the cached
// device list of a user sharing a room with a local user (fetched with
// /user/devices when not cached, or stale after a missed update), else
// with /user/keys/query.
func (u *UserAPI) queryServer(ctx context.Context, srv string, users []string, want map[string][]string) (*uapi.QueryKeysResponse, error) {
	resp := &uapi.QueryKeysResponse{DeviceKeys: map[string]map[string]json.RawMessage{}}
	ask := map[string][]string{}
	// Three batched reads for all the users (a client joining a room of
	// thousands asks for them at once), then one fetch per user whose
	// list is missing or stale.
	shares, err := u.store.SharingLocalOf(ctx, users)
	if err != nil {
		return nil, err
	}
	lists, err := u.store.RemoteDeviceListsOf(ctx, users)
	if err != nil {
		return nil, err
	}
	cross, err := u.store.CrossSigningKeysOf(ctx, users)
	if err != nil {
		return nil, err
	}
	for _, id := range users {
		devs, ok, err := u.cachedDevices(ctx, id, shares[id], lists[id])
		if err != nil {
			return nil, err
		}
		if !ok {
			ask[id] = want[id]
			if ask[id] == nil {
				ask[id] = []string{}
			}
			continue
		}
		keysOf(resp, id, devs, want[id])
		if l := lists[id]; l != nil && !l.Stale {
			addCrossSigning(resp, id, cross[id], false)
		} else if err := u.crossSigningOf(ctx, resp, id, false); err != nil { // fetched just now
			return nil, err
		}
	}
	if len(ask) == 0 {
		return resp, nil
	}
	if u.remote == nil {
		return nil, fmt.Errorf("no federation")
	}
	got, err := u.remote.QueryKeys(ctx, srv, ask)
	if err != nil {
		return nil, err
	}
	// Only what was asked of this server, for its own users, is kept.
	for id := range ask {
		if devs, ok := got.DeviceKeys[id]; ok {
			resp.DeviceKeys[id] = devs
		}
		if k, ok := got.MasterKeys[id]; ok {
			if resp.MasterKeys == nil {
				resp.MasterKeys = map[string]json.RawMessage{}
			}
			resp.MasterKeys[id] = k
		}
		if k, ok := got.SelfSigningKeys[id]; ok {
			if resp.SelfSigningKeys == nil {
				resp.SelfSigningKeys = map[string]json.RawMessage{}
			}
			resp.SelfSigningKeys[id] = k
		}
	}
	return resp, nil
}

// cachedDevices returns the device list of a remote user who shares a
// room with a local user (shares) from its cached list (nil: none),
// fetching it first when it is missing or stale. ok is false for a user
// who shares no room: its server no longer tells us of changes, so a copy
// kept is marked stale, to be fetched again should a room be shared again.
func (u *UserAPI) cachedDevices(ctx context.Context, userID string, shares bool, list *storage.RemoteList) ([]storage.DeviceKeys, bool, error) {
	if !shares {
		var err error
		if list != nil && !list.Stale {
			err = u.store.MarkDeviceListStale(ctx, userID)
		}
		return nil, false, err
	}
	if list != nil && !list.Stale {
		return list.Devs, true, nil
	}
	if u.remote == nil {
		return nil, false, nil
	}
	// Missing or stale: wait for the fetch (the one under way, if an
	// update asked for it), bounded by the query's timeout, as Synapse
	// does. If it fails, a stale copy is better than none; without one,
	// the user is asked with /user/keys/query.
	if err := u.resyncs.wait(ctx, userID); err != nil {
		if ctx.Err() == nil && list != nil && len(list.Devs) > 0 {
			return list.Devs, true, nil
		}
		return nil, false, nil
	}
	_, _, found, devs, err := u.store.RemoteDeviceList(ctx, userID)
	if err != nil || !found {
		return nil, false, err
	}
	return devs, true, nil
}

// ClaimKeys answers /keys/claim.
func (u *UserAPI) ClaimKeys(ctx context.Context, req uapi.ClaimKeysRequest) (*uapi.ClaimKeysResponse, error) {
	resp := &uapi.ClaimKeysResponse{OneTimeKeys: map[string]map[string]map[string]json.RawMessage{}, Failures: map[string]any{}}
	users := make([]string, 0, len(req.OneTimeKeys))
	for id := range req.OneTimeKeys {
		users = append(users, id)
	}
	local, remote := u.byServer(users)
	for _, id := range local {
		for dev, alg := range req.OneTimeKeys[id] {
			keyID, key, ok, err := u.store.ClaimKey(ctx, id, dev, alg)
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			if resp.OneTimeKeys[id] == nil {
				resp.OneTimeKeys[id] = map[string]map[string]json.RawMessage{}
			}
			resp.OneTimeKeys[id][dev] = map[string]json.RawMessage{keyID: json.RawMessage(key)}
		}
	}
	if req.LocalOnly || len(remote) == 0 {
		return resp, nil
	}
	ctx, cancel := context.WithTimeout(ctx, keysTimeout(req.Timeout))
	defer cancel()
	var mu sync.Mutex
	fanOut(ctx, keysOfMap(remote), func(ctx context.Context, srv string) {
		ask := map[string]map[string]string{}
		for _, id := range remote[srv] {
			ask[id] = req.OneTimeKeys[id]
		}
		var got *uapi.ClaimKeysResponse
		err := fmt.Errorf("no federation")
		if u.remote != nil {
			got, err = u.remote.ClaimKeys(ctx, srv, ask)
		}
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			resp.Failures[srv] = failure(err)
			return
		}
		for id := range ask {
			if keys, ok := got.OneTimeKeys[id]; ok {
				resp.OneTimeKeys[id] = keys
			}
		}
	})
	return resp, nil
}

// UserDevices is a local user's device list for /user/devices.
func (u *UserAPI) UserDevices(ctx context.Context, userID string) (*uapi.UserDevices, error) {
	if srv, ok := mxid.Server(userID); !ok || srv != u.serverName {
		return nil, uapi.ErrNotFound
	}
	devs, err := u.store.LocalDeviceKeys(ctx, userID)
	if err != nil {
		return nil, err
	}
	pos, err := u.store.DeviceListPos(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := &uapi.UserDevices{UserID: userID, StreamID: pos, Devices: make([]uapi.UserDevice, 0, len(devs))}
	cross, err := u.store.CrossSigningKeys(ctx, userID)
	if err != nil {
		return nil, err
	}
	if k, ok := cross["master"]; ok {
		out.MasterKey = json.RawMessage(k)
	}
	if k, ok := cross["self_signing"]; ok {
		out.SelfSigningKey = json.RawMessage(k)
	}
	for _, d := range devs {
		ud := uapi.UserDevice{DeviceID: d.DeviceID, DisplayName: d.DisplayName}
		if d.KeyJSON != "" {
			ud.Keys = json.RawMessage(d.KeyJSON)
		}
		out.Devices = append(out.Devices, ud)
	}
	return out, nil
}

// DeviceListUpdate applies an m.device_list_update EDU. An update of a
// user of another server than its origin is ignored. One that does not
// follow the last update applied marks the list stale (spec, "Device
// management"), and one of a user not tracked yet starts tracking it,
// stale: either way, for a user sharing a room with a local user, the list
// is fetched whole in the background (resync.go), not while the origin's
// transaction waits.
func (u *UserAPI) DeviceListUpdate(ctx context.Context, origin string, upd uapi.DeviceListUpdate) error {
	if srv, ok := mxid.Server(upd.UserID); !ok || srv != origin || srv == u.serverName || upd.DeviceID == "" {
		return nil
	}
	keys := presentJSON(upd.Keys)
	unlock := u.resyncs.lock(upd.UserID)
	outcome, pos, err := u.store.ApplyRemoteDeviceUpdate(ctx, storage.DeviceUpdate{
		UserID: upd.UserID, DeviceID: upd.DeviceID, DisplayName: upd.DisplayName,
		StreamID: upd.StreamID, PrevIDs: upd.PrevID, Deleted: upd.Deleted, KeyJSON: keys,
	})
	if err != nil {
		unlock()
		return err
	}
	switch outcome {
	case storage.UpdateApplied:
		unlock()
		return u.announce(ctx, upd.UserID, "device_lists", pos)
	case storage.UpdateGap:
		defer unlock()
		if err := u.announce(ctx, upd.UserID, "device_lists", pos); err != nil {
			return err
		}
		// A list stale because its user shares no room any more (it was
		// marked so when the user left) is fetched once a room is shared
		// again, not now: no local user needs it.
		shares, err := u.store.SharesRoomWithLocal(ctx, upd.UserID)
		if err != nil || !shares || u.remote == nil {
			return err
		}
		u.resyncs.kick(upd.UserID)
		return nil
	case storage.UpdateNotTracked:
		unlock()
		return u.track(ctx, upd.UserID)
	default:
		unlock()
		return nil
	}
}

// track starts tracking the device list of a remote user an update or a
// signing key update named, if it shares a room with a local user (else
// it is none of ours): the list is marked wanted, and fetched in the
// background.
func (u *UserAPI) track(ctx context.Context, userID string) error {
	if u.remote == nil {
		return nil
	}
	shares, err := u.store.SharesRoomWithLocal(ctx, userID)
	if err != nil {
		return err
	}
	if !shares {
		// The update may come right after the join that made the room
		// shared, before this component's view of membership has it:
		// the resyncer lets that view catch up (bounded) before it
		// decides, rather than the origin's transaction waiting.
		if u.bus != nil && u.push.rooms != nil {
			u.resyncs.kickUnsure(userID)
		}
		return nil
	}
	unlock := u.resyncs.lock(userID)
	defer unlock()
	if err := u.store.MarkDeviceListWanted(ctx, userID); err != nil {
		return err
	}
	u.resyncs.kick(userID)
	return nil
}

// DeviceListChanges lists the users whose device lists changed in
// (from, to], or says all when from is below the pruned stream's floor.
func (u *UserAPI) DeviceListChanges(ctx context.Context, from, to int64) ([]string, bool, error) {
	return u.store.DeviceListChanges(ctx, from, to)
}

// DeviceListRetention is how long the device-list stream keeps the
// changes of remote users' lists. A sync token older than that (in fact up
// to one prune interval more) is answered with every user sharing a room
// with the syncing user in device_lists.changed, which a client takes as
// "fetch their keys again": correct, only dearer, and rare.
const DeviceListRetention = 7 * 24 * time.Hour

// PruneDeviceLists marks the device-list stream's head at now and drops
// the changes older than DeviceListRetention (see
// storage.PruneDeviceListChanges); the userapi calls it hourly.
func (u *UserAPI) PruneDeviceLists(ctx context.Context, now time.Time) error {
	_, err := u.store.PruneDeviceListChanges(ctx, u.serverName, now.UnixMilli(), now.Add(-DeviceListRetention).UnixMilli())
	return err
}

// DeviceListsPos is the head of the device-list stream.
func (u *UserAPI) DeviceListsPos(ctx context.Context) (int64, error) {
	return u.store.DeviceListsPos(ctx)
}

// crossSigningOf adds userID's stored cross-signing keys to resp: the
// user-signing key only when withUserSigning (the user asking for its own).
func (u *UserAPI) crossSigningOf(ctx context.Context, resp *uapi.QueryKeysResponse, userID string, withUserSigning bool) error {
	cross, err := u.store.CrossSigningKeys(ctx, userID)
	if err != nil {
		return err
	}
	addCrossSigning(resp, userID, cross, withUserSigning)
	return nil
}

// addCrossSigning adds a user's cross-signing keys by type to resp; the
// user-signing key only when withUserSigning (its owner asks).
func addCrossSigning(resp *uapi.QueryKeysResponse, userID string, cross map[string]string, withUserSigning bool) {
	add := func(m *map[string]json.RawMessage, typ string) {
		k, ok := cross[typ]
		if !ok {
			return
		}
		if *m == nil {
			*m = map[string]json.RawMessage{}
		}
		(*m)[userID] = json.RawMessage(k)
	}
	add(&resp.MasterKeys, "master")
	add(&resp.SelfSigningKeys, "self_signing")
	if withUserSigning {
		add(&resp.UserSigningKeys, "user_signing")
	}
}

// UploadCrossSigningKeys stores a local user's cross-signing keys; users
// sharing a room hear of it through the device-list stream, and other
// servers through an m.signing_key_update (for the master and
// self-signing keys: the user-signing key is the user's own business).
func (u *UserAPI) UploadCrossSigningKeys(ctx context.Context, userID string, keys map[string]json.RawMessage) error {
	// The self-signing and user-signing keys must be signed by the master
	// key given with them, else by the user's current one (spec,
	// POST /keys/device_signing/upload).
	if keys["self_signing"] != nil || keys["user_signing"] != nil {
		master := string(keys["master"])
		if master == "" {
			cur, err := u.store.CrossSigningKeys(ctx, userID)
			if err != nil {
				return err
			}
			master = cur["master"]
		}
		pub := publicKeyOf(master)
		key := decodeKey(pub) // nil without a (valid) master key
		for _, typ := range []string{"self_signing", "user_signing"} {
			k := keys[typ]
			if k == nil {
				continue
			}
			if key == nil || gmsl.VerifyJSON(userID, gmsl.KeyID("ed25519:"+pub), key, k) != nil {
				return uapi.ErrInvalidSignature
			}
		}
	}
	stored := make(map[string]string, len(keys))
	for typ, k := range keys {
		stored[typ] = string(k)
	}
	// The user-signing key is its owner's business alone: a change of it
	// alone moves nothing others see (sytest: "Changing user-signing key
	// notifies local users" wants the other user not told).
	_, master := keys["master"]
	_, self := keys["self_signing"]
	c, err := u.store.StoreCrossSigningKeys(ctx, userID, stored, master || self)
	if err != nil {
		return err
	}
	if !master && !self {
		return nil
	}
	if err := u.announce(ctx, userID, "device_lists", c.Pos); err != nil {
		return err
	}
	upd := uapi.SigningKeyUpdate{UserID: userID, MasterKey: keys["master"], SelfSigningKey: keys["self_signing"]}
	if u.bus == nil || (upd.MasterKey == nil && upd.SelfSigningKey == nil) {
		return nil
	}
	data, err := json.Marshal(upd)
	if err != nil {
		return fmt.Errorf("encode signing key update: %w", err)
	}
	if err := u.bus.Publish(ctx, bus.NewMsg(bus.OutputSigningKeyUpdate, data, "sk:"+strconv.FormatInt(c.Pos, 10))); err != nil {
		return fmt.Errorf("publish signing key update of %s: %w", userID, err)
	}
	return nil
}

// SigningKeyUpdate applies an m.signing_key_update EDU to the copy of a
// tracked remote user's keys; for a user not tracked who shares a room
// with a local user, the whole list is fetched; any other, or one of a
// user of another server than origin, is dropped.
func (u *UserAPI) SigningKeyUpdate(ctx context.Context, origin string, upd uapi.SigningKeyUpdate) error {
	if srv, ok := mxid.Server(upd.UserID); !ok || srv != origin || srv == u.serverName {
		return nil
	}
	tracked, err := u.store.IsTracked(ctx, upd.UserID)
	if err != nil {
		return err
	}
	if !tracked {
		// A user sharing a room with a local user is fetched whole (its
		// keys included), as for a device list update, so local users
		// hear that its keys changed; any other is none of ours.
		return u.track(ctx, upd.UserID)
	}
	keys := crossSigningKeys(upd.MasterKey, upd.SelfSigningKey)
	if len(keys) == 0 {
		return nil
	}
	c, err := u.store.StoreCrossSigningKeys(ctx, upd.UserID, keys, true)
	if err != nil {
		return err
	}
	return u.announce(ctx, upd.UserID, "device_lists", c.Pos)
}

// presentJSON is raw as a string, "" when it is absent or null.
func presentJSON(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	return string(raw)
}

// crossSigningKeys is the master and self-signing keys given, by type
// ("master", "self_signing"), leaving out those absent or null.
func crossSigningKeys(master, selfSigning json.RawMessage) map[string]string {
	keys := map[string]string{}
	for typ, k := range map[string]json.RawMessage{"master": master, "self_signing": selfSigning} {
		if k := presentJSON(k); k != "" {
			keys[typ] = k
		}
	}
	return keys
}
