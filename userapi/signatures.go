package userapi

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/tidwall/gjson"

	"myelin/internal/mxid"
	uapi "myelin/userapi/api"
	"myelin/userapi/storage"
)

// signatureRefusal is why one signed object of an upload was refused; it
// becomes that object's entry in the answer's failures.
type signatureRefusal struct {
	code, msg string
}

func refuseSig(code, format string, args ...any) *signatureRefusal {
	return &signatureRefusal{code: code, msg: fmt.Sprintf(format, args...)}
}

// UploadSignatures stores the signatures signer made (spec: POST
// /keys/signatures/upload): of its own devices with its self-signing key,
// of its own master key with one of its devices, of another user's master
// key with its user-signing key. Each signature is verified against the
// stored key it claims; what fails is listed in the answer, by user and
// key ID, and the rest is stored. Signatures of the signer's own keys are
// merged into them, so they travel with the keys (a device list update
// over federation); those of other users' keys are shown to the signer
// alone.
func (u *UserAPI) UploadSignatures(ctx context.Context, signer string, signed map[string]map[string]json.RawMessage) (map[string]map[string]uapi.SignatureFailure, error) {
	failures := map[string]map[string]uapi.SignatureFailure{}
	cross, err := u.store.CrossSigningKeys(ctx, signer)
	if err != nil {
		return nil, err
	}
	for target, objs := range signed {
		for keyID, obj := range objs {
			var refusal *signatureRefusal
			if target == signer {
				refusal, err = u.signOwn(ctx, signer, cross, keyID, obj)
			} else {
				refusal, err = u.signOther(ctx, signer, cross, target, keyID, obj)
			}
			if err != nil {
				return nil, err
			}
			if refusal != nil {
				if failures[target] == nil {
					failures[target] = map[string]uapi.SignatureFailure{}
				}
				failures[target][keyID] = uapi.SignatureFailure{ErrCode: refusal.code, Error: refusal.msg}
			}
		}
	}
	return failures, nil
}

// signOwn handles a signature of one of signer's own keys: keyID is a
// device ID (signed by the self-signing key) or the master key's public
// key (signed by a device).
func (u *UserAPI) signOwn(ctx context.Context, signer string, cross map[string]string, keyID string, obj json.RawMessage) (*signatureRefusal, error) {
	if master := cross["master"]; master != "" && publicKeyOf(master) == keyID {
		devs, err := u.store.LocalDeviceKeys(ctx, signer)
		if err != nil {
			return nil, err
		}
		merged, refusal := verifyAndMerge(signer, master, obj, func(sigKeyID string) ed25519.PublicKey {
			dev, ok := strings.CutPrefix(sigKeyID, "ed25519:")
			if !ok {
				return nil
			}
			for _, d := range devs {
				if d.DeviceID == dev && d.KeyJSON != "" {
					return decodeKey(gjson.Get(d.KeyJSON, "keys").Map()[sigKeyID].String())
				}
			}
			return nil
		})
		if refusal != nil {
			return refusal, nil
		}
		return nil, u.UploadCrossSigningKeys(ctx, signer, map[string]json.RawMessage{"master": merged})
	}
	devs, err := u.store.LocalDeviceKeys(ctx, signer)
	if err != nil {
		return nil, err
	}
	var stored string
	for _, d := range devs {
		if d.DeviceID == keyID {
			stored = d.KeyJSON
		}
	}
	if stored == "" {
		return refuseSig("M_NOT_FOUND", "no device or master key %s of %s", keyID, signer), nil
	}
	ssk := cross["self_signing"]
	if ssk == "" {
		return refuseSig("M_MISSING_PARAM", "%s has no self-signing key", signer), nil
	}
	merged, refusal := verifyAndMerge(signer, stored, obj, keyOf(ssk))
	if refusal != nil {
		return refusal, nil
	}
	_, err = u.UploadKeys(ctx, uapi.UploadKeysRequest{UserID: signer, DeviceID: keyID, DeviceKeys: merged})
	if errors.Is(err, uapi.ErrUnknownToken) { // the device was deleted meanwhile
		return refuseSig("M_NOT_FOUND", "no device or master key %s of %s", keyID, signer), nil
	}
	return nil, err
}

// signOther handles a signature of another user's master key, made with
// signer's user-signing key.
func (u *UserAPI) signOther(ctx context.Context, signer string, cross map[string]string, target, keyID string, obj json.RawMessage) (*signatureRefusal, error) {
	if mxid.UserID(target) != nil {
		return refuseSig("M_INVALID_PARAM", "%q is not a user ID", target), nil
	}
	usk := cross["user_signing"]
	if usk == "" {
		return refuseSig("M_MISSING_PARAM", "%s has no user-signing key", signer), nil
	}
	theirs, err := u.QueryKeys(ctx, uapi.QueryKeysRequest{DeviceKeys: map[string][]string{target: {}}})
	if err != nil {
		return nil, err
	}
	master := string(theirs.MasterKeys[target])
	if master == "" || publicKeyOf(master) != keyID {
		return refuseSig("M_NOT_FOUND", "%s is not the master key of %s", keyID, target), nil
	}
	merged, refusal := verifyAndMerge(signer, master, obj, keyOf(usk))
	if refusal != nil {
		return refusal, nil
	}
	// Only the signer's new signatures are kept: verifyAndMerge checked
	// each of them.
	for sigKeyID, sig := range gjson.GetBytes(merged, "signatures").Map()[signer].Map() {
		c, err := u.store.StoreUserSignature(ctx, storage.UserSignature{
			Signer: signer, Target: target, TargetKeyID: keyID, SignerKeyID: sigKeyID, Signature: sig.String(),
		})
		if err != nil {
			return nil, err
		}
		if err := u.announce(ctx, target, "device_lists", c.Pos); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

// verifyAndMerge checks that obj is the stored key (signatures and
// unsigned aside), verifies each signature signer put on it with the key
// keyFor gives for its key ID (nil: unknown), and returns the stored key
// with those signatures added.
func verifyAndMerge(signer, stored string, obj json.RawMessage, keyFor func(sigKeyID string) ed25519.PublicKey) (json.RawMessage, *signatureRefusal) {
	g := gjson.ParseBytes(obj)
	if !g.IsObject() {
		return nil, refuseSig("M_BAD_JSON", "a signed key must be an object")
	}
	a, errA := unsignedCanonical([]byte(stored))
	b, errB := unsignedCanonical(obj)
	if errA != nil || errB != nil || !bytes.Equal(a, b) {
		return nil, refuseSig("M_INVALID_PARAM", "the signed object is not the stored key")
	}
	sigs := g.Get("signatures").Map()[signer].Map()
	if len(sigs) == 0 {
		return nil, refuseSig("M_MISSING_PARAM", "no signature of %s", signer)
	}
	known := gjson.Get(stored, "signatures").Map()[signer].Map()
	verified := map[string]string{}
	for sigKeyID, sig := range sigs {
		if old, ok := known[sigKeyID]; ok && old.String() == sig.String() {
			continue
		}
		pub := keyFor(sigKeyID)
		if pub == nil {
			return nil, refuseSig("M_INVALID_SIGNATURE", "no key %s of %s to check the signature with", sigKeyID, signer)
		}
		if err := gmsl.VerifyJSON(signer, gmsl.KeyID(sigKeyID), pub, obj); err != nil {
			return nil, refuseSig("M_INVALID_SIGNATURE", "the signature by %s does not verify", sigKeyID)
		}
		verified[sigKeyID] = sig.String()
	}
	out, err := addSignatures([]byte(stored), signer, verified)
	if err != nil {
		return nil, refuseSig("M_INVALID_PARAM", "%v", err)
	}
	return out, nil
}

// addSignatures returns the key object raw with sigs (signing key ID ->
// signature) added to signer's signatures of it.
func addSignatures(raw []byte, signer string, sigs map[string]string) (json.RawMessage, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, fmt.Errorf("the key is not an object: %w", err)
	}
	all := map[string]map[string]string{}
	if r, ok := fields["signatures"]; ok {
		_ = json.Unmarshal(r, &all)
	}
	if all[signer] == nil {
		all[signer] = map[string]string{}
	}
	maps.Copy(all[signer], sigs)
	r, err := json.Marshal(all)
	if err != nil {
		return nil, fmt.Errorf("encode signatures: %w", err)
	}
	fields["signatures"] = r
	out, err := json.Marshal(fields)
	if err != nil {
		return nil, fmt.Errorf("encode the key: %w", err)
	}
	return out, nil
}

// unsignedCanonical is the canonical JSON of a key without its
// signatures and unsigned fields: what a signature covers.
func unsignedCanonical(raw []byte) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, err
	}
	delete(fields, "signatures")
	delete(fields, "unsigned")
	out, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return gmsl.CanonicalJSON(out)
}

// publicKeyOf is the public key of a cross-signing key object (which
// holds exactly one), in unpadded base64: the key ID clients sign it under.
func publicKeyOf(key string) string {
	for _, v := range gjson.Get(key, "keys").Map() {
		return v.String()
	}
	return ""
}

// keyOf answers the public key of a cross-signing key object for its own
// key ID, nil for any other.
func keyOf(key string) func(string) ed25519.PublicKey {
	return func(sigKeyID string) ed25519.PublicKey {
		for id, v := range gjson.Get(key, "keys").Map() {
			if id == sigKeyID {
				return decodeKey(v.String())
			}
		}
		return nil
	}
}

// decodeKey decodes an unpadded base64 ed25519 public key; nil if it is
// not one.
func decodeKey(s string) ed25519.PublicKey {
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil
	}
	return ed25519.PublicKey(b)
}

// withUserSignatures adds to the master keys in resp the signatures
// requester made of them with its user-signing key, which only it sees.
func (u *UserAPI) withUserSignatures(ctx context.Context, resp *uapi.QueryKeysResponse, requester string) error {
	if requester == "" || len(resp.MasterKeys) == 0 {
		return nil
	}
	sigs, err := u.store.UserSignatures(ctx, requester)
	if err != nil {
		return err
	}
	for _, s := range sigs {
		master, ok := resp.MasterKeys[s.Target]
		if !ok || s.Target == requester || publicKeyOf(string(master)) != s.TargetKeyID {
			continue
		}
		out, err := addSignatures(master, requester, map[string]string{s.SignerKeyID: s.Signature})
		if err != nil {
			continue
		}
		resp.MasterKeys[s.Target] = out
	}
	return nil
}
