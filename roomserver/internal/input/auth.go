package input

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	gmsl "github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"myelin/internal/eventsig"
)

// Allowed checks pdu against the auth rules with auth as its auth events.
// gomatrixserverlib's checks fall short on an invite from a third-party
// invite (spec: auth rules, m.room.member, invite with
// third_party_invite): they skip that the target must not be banned and
// that the sender must be whoever sent the m.room.third_party_invite, and
// they verify the identity server's signature over the proof as they
// re-encode it, dropping its fields other than mxid, token and signatures
// (a proof that also names its sender, as a /join's third_party_signed
// does, never verifies). Such an invite is checked here in full.
func Allowed(pdu gmsl.PDU, auth gmsl.AuthEventProvider) error {
	err := gmsl.Allowed(pdu, auth, eventsig.UserIDForSender)
	if pdu.Type() != spec.MRoomMember || pdu.StateKey() == nil {
		return err
	}
	var c struct {
		Membership       string `json:"membership"`
		ThirdPartyInvite *struct {
			Signed json.RawMessage `json:"signed"`
		} `json:"third_party_invite"`
	}
	if json.Unmarshal(pdu.Content(), &c) != nil || c.Membership != spec.Invite || c.ThirdPartyInvite == nil {
		return err
	}
	var na *gmsl.NotAllowed
	if err != nil && !(errors.As(err, &na) && strings.HasPrefix(na.Message, "Couldn't verify signature on third-party invite")) {
		return err
	}
	return thirdPartyInviteAllowed(pdu, auth, c.ThirdPartyInvite.Signed)
}

// thirdPartyInviteAllowed is the spec's rule for an invite from a
// third-party invite, once the checks every event gets have passed.
func thirdPartyInviteAllowed(pdu gmsl.PDU, auth gmsl.AuthEventProvider, signed json.RawMessage) error {
	var proof struct {
		MXID  string `json:"mxid"`
		Token string `json:"token"`
	}
	if json.Unmarshal(signed, &proof) != nil || proof.MXID == "" || proof.Token == "" {
		return &gmsl.NotAllowed{Message: "third_party_invite.signed needs mxid and token"}
	}
	if proof.MXID != *pdu.StateKey() {
		return &gmsl.NotAllowed{Message: "the third-party invite's mxid is not the invite's target"}
	}
	target, err := auth.Member(spec.SenderID(*pdu.StateKey()))
	if err != nil {
		return err
	}
	if target != nil {
		if m, err := target.Membership(); err == nil && m == spec.Ban {
			return &gmsl.NotAllowed{Message: "the target of a third-party invite is banned"}
		}
	}
	tpi, err := auth.ThirdPartyInvite(proof.Token)
	if err != nil {
		return err
	}
	if tpi == nil {
		return &gmsl.NotAllowed{Message: "no m.room.third_party_invite for the invite's token"}
	}
	if tpi.SenderID() != pdu.SenderID() {
		return &gmsl.NotAllowed{Message: "a third-party invite must be sent by the sender of its m.room.third_party_invite"}
	}
	var content ThirdPartyInviteContent
	if err := json.Unmarshal(tpi.Content(), &content); err != nil {
		return &gmsl.NotAllowed{Message: "the m.room.third_party_invite's content is not valid"}
	}
	if _, _, ok := VerifyThirdPartyProof(signed, content); !ok {
		return &gmsl.NotAllowed{Message: "no key of the m.room.third_party_invite signed the third-party invite"}
	}
	return nil
}

// ThirdPartyInviteContent is the content of an m.room.third_party_invite
// event: a single public key (older identity servers) and a list.
type ThirdPartyInviteContent struct {
	DisplayName    string `json:"display_name"`
	PublicKey      string `json:"public_key"`
	KeyValidityURL string `json:"key_validity_url"`
	PublicKeys     []struct {
		PublicKey      string `json:"public_key"`
		KeyValidityURL string `json:"key_validity_url"`
	} `json:"public_keys"`
}

// VerifyThirdPartyProof finds the public key of an m.room.third_party_invite
// whose signature is on raw, an identity server's signed proof as it was
// signed (every field of it counts), and that key's validity URL.
func VerifyThirdPartyProof(raw json.RawMessage, c ThirdPartyInviteContent) (key, validityURL string, ok bool) {
	var proof struct {
		Signatures map[string]map[string]string `json:"signatures"`
	}
	if json.Unmarshal(raw, &proof) != nil {
		return "", "", false
	}
	type candidate struct{ key, url string }
	var keys []candidate
	if c.PublicKey != "" {
		keys = append(keys, candidate{c.PublicKey, c.KeyValidityURL})
	}
	for _, k := range c.PublicKeys {
		if k.PublicKey != "" {
			keys = append(keys, candidate{k.PublicKey, k.KeyValidityURL})
		}
	}
	for _, k := range keys {
		pub, err := decodeKey(k.key)
		if err != nil {
			continue
		}
		for domain, sigs := range proof.Signatures {
			for keyID := range sigs {
				if !strings.HasPrefix(keyID, "ed25519:") {
					continue
				}
				if gmsl.VerifyJSON(domain, gmsl.KeyID(keyID), pub, raw) == nil {
					return k.key, k.url, true
				}
			}
		}
	}
	return "", "", false
}

// decodeKey decodes an identity server's public key: unpadded base64 in
// the spec, in either alphabet and padded in the wild.
func decodeKey(s string) (ed25519.PublicKey, error) {
	for _, enc := range []*base64.Encoding{base64.RawStdEncoding, base64.StdEncoding, base64.RawURLEncoding, base64.URLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == ed25519.PublicKeySize {
			return ed25519.PublicKey(b), nil
		}
	}
	return nil, errors.New("not an ed25519 public key")
}
