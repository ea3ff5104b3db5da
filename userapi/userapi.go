// Package userapi is the userapi component: local accounts and their
// passwords, devices and access tokens, profiles, account data, and push
// notifications (push rules, pushers, the evaluation of every event for
// the local users it may notify). It implements uapi.API; only setup (and
// the create-account command) import this package, everyone else holds a
// uapi.API.
package userapi

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	"myelin/internal/bus"
	"myelin/internal/sqldb"
	"myelin/setup/config"
	uapi "myelin/userapi/api"
	"myelin/userapi/internal/pushrules"
	"myelin/userapi/storage"
)

const (
	// tokenCacheSize bounds the access-token cache (entries are ~200 bytes).
	tokenCacheSize = 50_000
	// tokenCacheTTL bounds how long a cached token outlives a change made
	// by another process.
	tokenCacheTTL = 2 * time.Minute
	// lastSeenEvery is how often a device's last-seen time and IP are
	// written while it is in use.
	lastSeenEvery = time.Minute
	// maxTokenLen: longer strings cannot be our tokens; they are refused
	// without hashing or a lookup.
	maxTokenLen = 512
)

// UserAPI implements uapi.API.
type UserAPI struct {
	serverName string
	bcryptCost int
	store      *storage.Storage
	bus        *bus.Bus // nil: changes are not announced
	log        *logrus.Entry
	now        func() time.Time
	tokens     *tokenCache

	// accountDataMu serialises account-data writes together with their
	// announcement, so that positions are committed and published in order
	// and a reader never sees position N+1 before N.
	accountDataMu sync.Mutex

	dummyOnce sync.Once
	dummyHash []byte

	push *pushState

	// remote asks other servers for their users' keys (SetRemoteKeys).
	remote uapi.RemoteKeys

	lastSeen lastSeenBatch

	// resyncs fetches remote users' device lists in the background.
	resyncs *resyncer
}

var _ uapi.API = (*UserAPI)(nil)

// New returns the userapi, after applying its migrations to db. With a nil
// b nothing is published (the create-account command runs so).
func New(ctx context.Context, db *sqldb.DB, b *bus.Bus, cfg *config.Config, log *logrus.Entry) (*UserAPI, error) {
	store, err := storage.Open(ctx, db)
	if err != nil {
		return nil, fmt.Errorf("userapi storage: %w", err)
	}
	u := &UserAPI{
		serverName: cfg.ServerName,
		bcryptCost: cfg.Registration.BcryptCost,
		store:      store,
		bus:        b,
		log:        log,
		now:        time.Now,
		tokens:     newTokenCache(tokenCacheSize, tokenCacheTTL, lastSeenEvery),
		push:       newPushState(),
	}
	u.resyncs = newResyncer(u)
	return u, nil
}

func (u *UserAPI) userID(localpart string) string { return "@" + localpart + ":" + u.serverName }

// CreateAccount makes a local account. An empty localpart gets the next
// free number, as Synapse does for registrations without a username.
// New accounts' display name is their localpart (as in Synapse).
func (u *UserAPI) CreateAccount(ctx context.Context, req uapi.CreateAccountRequest) (*uapi.Account, error) {
	if req.Localpart != "" {
		if err := uapi.ValidLocalpart(req.Localpart, u.serverName); err != nil {
			return nil, err
		}
	}
	var hash string
	if req.Password != "" {
		h, err := bcrypt.GenerateFromPassword(bcryptInput(req.Password), u.bcryptCost)
		if err != nil {
			return nil, fmt.Errorf("hash password: %w", err)
		}
		hash = string(h)
	}
	insert := func(localpart string) (*uapi.Account, error) {
		a := storage.NewAccount{
			UserID:       u.userID(localpart),
			Localpart:    localpart,
			PasswordHash: hash,
			IsAdmin:      req.IsAdmin,
			IsGuest:      req.IsGuest,
			DisplayName:  localpart,
			CreatedTS:    u.now().UnixMilli(),
		}
		if err := u.store.InsertAccount(ctx, a); err != nil {
			return nil, err
		}
		return &uapi.Account{UserID: a.UserID, Localpart: localpart, IsAdmin: a.IsAdmin, IsGuest: a.IsGuest, CreatedTS: a.CreatedTS}, nil
	}
	if req.Localpart != "" {
		return insert(req.Localpart)
	}
	n, err := u.store.CountAccounts(ctx)
	if err != nil {
		return nil, err
	}
	// The account count is usually the last number handed out; numbers
	// chosen as usernames or registered concurrently push it on, and past a
	// few collisions a random number is cheaper than walking on.
	for i := int64(1); i <= 20; i++ {
		candidate := n + i
		if i > 10 {
			r, err := rand.Int(rand.Reader, big.NewInt(9_000_000_000))
			if err != nil {
				return nil, fmt.Errorf("random localpart: %w", err)
			}
			candidate = 1_000_000_000 + r.Int64()
		}
		a, err := insert(strconv.FormatInt(candidate, 10))
		if errors.Is(err, uapi.ErrUserInUse) {
			continue
		}
		return a, err
	}
	return nil, errors.New("no free numeric localpart after 20 attempts")
}

// bcryptInput is what is hashed for password: bcrypt reads at most 72
// bytes (and x/crypto refuses more), so longer passwords are first reduced
// to the base64 of their SHA-256, keeping every byte significant.
func bcryptInput(password string) []byte {
	if len(password) <= 72 {
		return []byte(password)
	}
	h := sha256.Sum256([]byte(password))
	return []byte(base64.StdEncoding.EncodeToString(h[:]))
}

// Account returns a local account (uapi.ErrNotFound if there is none).
func (u *UserAPI) Account(ctx context.Context, userID string) (*uapi.Account, error) {
	a, _, err := u.store.Account(ctx, userID)
	return a, err
}

// CheckPassword returns the account if password is its password:
// uapi.ErrBadPassword if it is not (or there is no such account),
// uapi.ErrUserDeactivated if it is but the account is deactivated.
func (u *UserAPI) CheckPassword(ctx context.Context, userID, password string) (*uapi.Account, error) {
	a, hash, err := u.store.Account(ctx, userID)
	if uapi.IsNotFound(err) || (err == nil && hash == "") {
		// Spend the time a real check would, so that response times do
		// not tell which user IDs exist.
		_ = bcrypt.CompareHashAndPassword(u.dummy(), bcryptInput(password))
		return nil, uapi.ErrBadPassword
	}
	if err != nil {
		return nil, err
	}
	if bcrypt.CompareHashAndPassword([]byte(hash), bcryptInput(password)) != nil {
		return nil, uapi.ErrBadPassword
	}
	if a.Deactivated {
		return nil, uapi.ErrUserDeactivated
	}
	return a, nil
}

func (u *UserAPI) dummy() []byte {
	u.dummyOnce.Do(func() {
		var b [16]byte
		_, _ = rand.Read(b[:])
		u.dummyHash, _ = bcrypt.GenerateFromPassword([]byte(base64.RawStdEncoding.EncodeToString(b[:])), u.bcryptCost)
	})
	return u.dummyHash
}

// SetPassword changes a password; with logoutOthers every device but
// keepDeviceID is deleted.
func (u *UserAPI) SetPassword(ctx context.Context, userID, password string, logoutOthers bool, keepDeviceID string) error {
	h, err := bcrypt.GenerateFromPassword(bcryptInput(password), u.bcryptCost)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	var others []string
	if logoutOthers {
		all, err := u.devicesOf(ctx, userID, nil)
		if err != nil {
			return err
		}
		for _, d := range all {
			if d != keepDeviceID {
				others = append(others, d)
			}
		}
	}
	if err := u.store.SetPasswordHash(ctx, userID, string(h), logoutOthers, keepDeviceID); err != nil {
		return err
	}
	if logoutOthers {
		u.tokens.invalidateUser(userID)
	}
	return u.deleteDeviceKeys(ctx, userID, others)
}

// UpgradeGuest implements uapi.API.
func (u *UserAPI) UpgradeGuest(ctx context.Context, userID, password string) error {
	h, err := bcrypt.GenerateFromPassword(bcryptInput(password), u.bcryptCost)
	if err != nil {
		return fmt.Errorf("hash password: %w", err)
	}
	if err := u.store.UpgradeGuest(ctx, userID, string(h)); err != nil {
		return err
	}
	// Cached devices still say "guest".
	u.tokens.invalidateUser(userID)
	return nil
}

// Deactivate disables an account for good: its devices are deleted, its
// profile cleared, and it can no longer log in.
func (u *UserAPI) Deactivate(ctx context.Context, userID string, erase bool) error {
	gone, err := u.devicesOf(ctx, userID, nil)
	if err != nil {
		return err
	}
	if err := u.store.Deactivate(ctx, userID, erase); err != nil {
		return err
	}
	u.tokens.invalidateUser(userID)
	return u.deleteDeviceKeys(ctx, userID, gone)
}

// CreateDevice logs a user in: a new device with a fresh access token, or
// an existing device (named by req.DeviceID) whose old tokens are revoked.
func (u *UserAPI) CreateDevice(ctx context.Context, req uapi.CreateDeviceRequest) (*uapi.Device, uapi.Tokens, error) {
	var none uapi.Tokens
	a, _, err := u.store.Account(ctx, req.UserID)
	if err != nil {
		return nil, none, err
	}
	if a.Deactivated {
		return nil, none, uapi.ErrUserDeactivated
	}
	tokens, err := u.newTokens(req.RefreshLifetime)
	if err != nil {
		return nil, none, err
	}
	nd := storage.NewDevice{
		UserID:         req.UserID,
		DeviceID:       req.DeviceID,
		DisplayName:    req.DisplayName,
		TokenHash:      hashToken(tokens.Access),
		IP:             req.IP,
		UserAgent:      req.UserAgent,
		TS:             u.now().UnixMilli(),
		TokenExpiresTS: tokens.ExpiresTS,
		Replace:        req.DeviceID != "",
	}
	if tokens.Refresh != "" {
		nd.RefreshHash = hashToken(tokens.Refresh)
	}
	var dev *uapi.Device
	if nd.Replace {
		dev, err = u.store.InsertDevice(ctx, nd)
		if err != nil {
			return nil, none, err
		}
		u.tokens.invalidateDevices(req.UserID, req.DeviceID)
	} else {
		// A generated ID that happens to exist is drawn again rather than
		// taking that device over.
		for i := 0; i < 5; i++ {
			if nd.DeviceID, err = randomDeviceID(); err != nil {
				return nil, none, err
			}
			dev, err = u.store.InsertDevice(ctx, nd)
			if !errors.Is(err, uapi.ErrUserInUse) {
				break
			}
		}
		if err != nil {
			return nil, none, err
		}
	}
	dev.IsAdmin = a.IsAdmin
	if err := u.deviceAdded(ctx, dev); err != nil {
		return nil, none, err
	}
	return dev, tokens, nil
}

// newTokens makes an access token, and when lifetime is positive a
// refresh token and the access token's expiry.
func (u *UserAPI) newTokens(lifetime time.Duration) (uapi.Tokens, error) {
	var t uapi.Tokens
	var err error
	if t.Access, err = randomString(32); err != nil {
		return t, err
	}
	if lifetime > 0 {
		if t.Refresh, err = randomString(32); err != nil {
			return t, err
		}
		t.ExpiresTS = u.now().Add(lifetime).UnixMilli()
	}
	return t, nil
}

// Refresh implements uapi.API.
func (u *UserAPI) Refresh(ctx context.Context, refreshToken string, lifetime time.Duration) (uapi.Tokens, error) {
	if refreshToken == "" || len(refreshToken) > maxTokenLen {
		return uapi.Tokens{}, uapi.ErrUnknownToken
	}
	tokens, err := u.newTokens(lifetime)
	if err != nil {
		return uapi.Tokens{}, err
	}
	newRefresh := ""
	if tokens.Refresh != "" {
		newRefresh = hashToken(tokens.Refresh)
	}
	dev, err := u.store.Refresh(ctx, hashToken(refreshToken), hashToken(tokens.Access), newRefresh, tokens.ExpiresTS)
	if err != nil {
		return uapi.Tokens{}, err
	}
	// The old access token is gone; so must its cache entry be.
	u.tokens.invalidateDevices(dev.UserID, dev.DeviceID)
	return tokens, nil
}

// CreateLoginToken implements uapi.API.
func (u *UserAPI) CreateLoginToken(ctx context.Context, userID string, lifetime time.Duration) (string, error) {
	token, err := randomString(32)
	if err != nil {
		return "", err
	}
	now := u.now()
	if err := u.store.InsertLoginToken(ctx, hashToken(token), userID, now.Add(lifetime).UnixMilli(), now.UnixMilli()); err != nil {
		return "", err
	}
	return token, nil
}

// TakeLoginToken implements uapi.API.
func (u *UserAPI) TakeLoginToken(ctx context.Context, token string) (string, error) {
	if token == "" || len(token) > maxTokenLen {
		return "", uapi.ErrUnknownToken
	}
	return u.store.TakeLoginToken(ctx, hashToken(token), u.now().UnixMilli())
}

// randomString returns n random bytes, URL-safe base64-encoded.
func randomString(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// randomDeviceID returns ten random capital letters, the shape of
// Synapse's device IDs.
func randomDeviceID() (string, error) {
	b := make([]byte, 10)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random device ID: %w", err)
	}
	for i := range b {
		b[i] = 'A' + b[i]%26
	}
	return string(b), nil
}

// DeviceByToken resolves an access token to its device, from the cache
// when it can. It also records, about once a minute per device, when and
// from where (uapi.ClientIP(ctx)) the device was last used.
func (u *UserAPI) DeviceByToken(ctx context.Context, token string) (*uapi.Device, error) {
	return u.deviceByToken(ctx, token, false)
}

// DeviceByTokenForLogout implements uapi.API.
func (u *UserAPI) DeviceByTokenForLogout(ctx context.Context, token string) (*uapi.Device, error) {
	return u.deviceByToken(ctx, token, true)
}

func (u *UserAPI) deviceByToken(ctx context.Context, token string, allowExpired bool) (*uapi.Device, error) {
	if token == "" || len(token) > maxTokenLen {
		return nil, uapi.ErrUnknownToken
	}
	hash := hashToken(token)
	now := u.now()
	ip := uapi.ClientIP(ctx)
	dev, seen, ok := u.tokens.get(hash, now, ip)
	if !ok {
		gen := u.tokens.generation()
		loaded, err := u.store.DeviceByTokenHash(ctx, hash)
		if err != nil {
			return nil, err
		}
		dev, seen = u.tokens.put(hash, *loaded, gen, now, ip)
	}
	// Checked here, not only when loading: a cached device outlives its
	// token's expiry.
	if !allowExpired && dev.ExpiresTS != 0 && now.UnixMilli() >= dev.ExpiresTS {
		return nil, uapi.ErrTokenExpired
	}
	if seen {
		u.lastSeen.add(dev.SessionID, dev.LastSeenTS, ip)
	}
	return &dev, nil
}

// Devices lists a user's devices.
func (u *UserAPI) Devices(ctx context.Context, userID string) ([]uapi.Device, error) {
	u.flushLastSeen(ctx)
	return u.store.Devices(ctx, userID)
}

// Device returns one device of a user (uapi.ErrNotFound if there is none).
func (u *UserAPI) Device(ctx context.Context, userID, deviceID string) (*uapi.Device, error) {
	u.flushLastSeen(ctx)
	return u.store.Device(ctx, userID, deviceID)
}

// SetDeviceName renames a device (uapi.ErrNotFound if there is none).
func (u *UserAPI) SetDeviceName(ctx context.Context, userID, deviceID, name string) error {
	if err := u.store.SetDeviceName(ctx, userID, deviceID, name); err != nil {
		return err
	}
	u.tokens.invalidateDevices(userID, deviceID)
	change, keys, err := u.store.DeviceRenamed(ctx, userID, deviceID)
	if err != nil || change == nil {
		return err
	}
	upd := uapi.DeviceListUpdate{DisplayName: name}
	if keys != "" {
		upd.Keys = json.RawMessage(keys)
	}
	return u.deviceListChanged(ctx, *change, upd)
}

// DeleteDevices deletes devices (all of the user's if deviceIDs is nil) and
// revokes their tokens.
func (u *UserAPI) DeleteDevices(ctx context.Context, userID string, deviceIDs []string) error {
	gone, err := u.devicesOf(ctx, userID, deviceIDs)
	if err != nil {
		return err
	}
	if err := u.store.DeleteDevices(ctx, userID, deviceIDs); err != nil {
		return err
	}
	if deviceIDs == nil {
		u.tokens.invalidateUser(userID)
	} else {
		u.tokens.invalidateDevices(userID, deviceIDs...)
	}
	return u.deleteDeviceKeys(ctx, userID, gone)
}

// Profile returns a local user's profile (uapi.ErrNotFound if there is no
// such user).
func (u *UserAPI) Profile(ctx context.Context, userID string) (*uapi.Profile, error) {
	return u.store.Profile(ctx, userID)
}

// SetProfile sets the profile fields that are not nil.
func (u *UserAPI) SetProfile(ctx context.Context, userID string, displayName, avatarURL *string) error {
	if displayName == nil && avatarURL == nil {
		return nil
	}
	return u.store.SetProfile(ctx, userID, displayName, avatarURL)
}

// SetAccountData stores an account-data item (content must be a JSON
// object) and announces the new position on bus.OutputUserData.
func (u *UserAPI) SetAccountData(ctx context.Context, userID, roomID, dataType string, content json.RawMessage) (int64, error) {
	if c := strings.TrimSpace(string(content)); !json.Valid(content) || !strings.HasPrefix(c, "{") {
		return 0, fmt.Errorf("account data %s of %s: content is not a JSON object", dataType, userID)
	}
	u.accountDataMu.Lock()
	defer u.accountDataMu.Unlock()
	pos, err := u.store.SetAccountData(ctx, userID, roomID, dataType, content)
	if err != nil {
		return 0, err
	}
	if roomID == "" && dataType == pushRulesType {
		u.push.forget(userID)
	}
	if roomID == "" && dataType == uapi.IgnoredUserListType {
		u.push.forgetIgnored(userID)
	}
	if err := u.announce(ctx, userID, "account_data", pos); err != nil {
		return pos, err
	}
	return pos, nil
}

// announce tells /sync that a user's stream moved. The message ID lets
// JetStream drop a duplicate should a publish be retried.
func (u *UserAPI) announce(ctx context.Context, userID, stream string, pos int64) error {
	if u.bus == nil {
		return nil
	}
	data, err := json.Marshal(uapi.UserDataUpdate{UserID: userID, Stream: stream, Pos: pos})
	if err != nil {
		return fmt.Errorf("encode user data update: %w", err)
	}
	msgID := stream + ":" + strconv.FormatInt(pos, 10)
	// Account data keeps the stream's plain subject; other streams take a
	// subject of their own (OutputUserData.<stream>), which syncapi's
	// consumer of the whole stream reads alike.
	subject := bus.OutputUserData
	if stream != "account_data" {
		subject += "." + stream
	}
	if err := u.bus.Publish(ctx, bus.NewMsg(subject, data, msgID)); err != nil {
		return fmt.Errorf("publish %s position %d of %s: %w", stream, pos, userID, err)
	}
	return nil
}

// AccountData returns one item (uapi.ErrNotFound if unset). m.push_rules
// is always set: it is the user's effective push rules.
func (u *UserAPI) AccountData(ctx context.Context, userID, roomID, dataType string) (json.RawMessage, error) {
	if roomID == "" && dataType == pushRulesType {
		rs, err := u.PushRules(ctx, userID)
		if err != nil {
			return nil, err
		}
		return pushrules.AccountData(rs), nil
	}
	return u.store.AccountData(ctx, userID, roomID, dataType)
}

// AccountDataSince returns the user's items whose latest change is in
// (from, to], in position order. m.push_rules is the effective rules, and
// an initial sync (from 0) always has it, stored or not.
func (u *UserAPI) AccountDataSince(ctx context.Context, userID string, from, to int64) ([]uapi.AccountData, error) {
	var items []uapi.AccountData
	if to > from {
		var err error
		if items, err = u.store.AccountDataRange(ctx, userID, from, to); err != nil {
			return nil, err
		}
	}
	hasRules := false
	for i := range items {
		if items[i].RoomID == "" && items[i].Type == pushRulesType {
			hasRules = true
			content, err := u.AccountData(ctx, userID, "", pushRulesType)
			if err != nil {
				return nil, err
			}
			items[i].Content = content
		}
	}
	if from == 0 && !hasRules {
		content, err := u.AccountData(ctx, userID, "", pushRulesType)
		if err != nil {
			return nil, err
		}
		items = append([]uapi.AccountData{{Type: pushRulesType, Content: content}}, items...)
	}
	return items, nil
}

// AccountDataPos is the position of the last committed account-data change.
func (u *UserAPI) AccountDataPos(ctx context.Context) (int64, error) {
	return u.store.AccountDataPos(ctx)
}
