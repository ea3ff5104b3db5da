package federationapi

import (
	"context"
	"encoding/json"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// eduHandler takes in the content of one EDU that origin sent in a
// transaction. Its error is logged: an EDU never fails its transaction.
type eduHandler func(ctx context.Context, origin spec.ServerName, content json.RawMessage) error

// registerEDUs fills the table of EDU handlers, one handleEDU call per
// edu_type this server takes in (m.typing, m.receipt, m.presence,
// m.direct_to_device, m.device_list_update, m.signing_key_update). New
// calls it once; the table is only read after that.
func (f *FederationAPI) registerEDUs() {
	f.handleEDU(eduTyping, f.onTypingEDU)
	f.handleEDU(eduReceipt, f.onReceiptEDU)
	f.handleEDU(eduPresence, f.onPresenceEDU)
	f.handleEDU(eduDeviceListUpd, f.onDeviceListUpdateEDU)
	f.handleEDU(eduDirectToDevice, f.onDirectToDeviceEDU)
	f.handleEDU(eduSigningKeyUpd, f.onSigningKeyUpdateEDU)
}

// handleEDU makes h the handler of the EDUs of type eduType.
func (f *FederationAPI) handleEDU(eduType string, h eduHandler) {
	if f.edus == nil {
		f.edus = map[string]eduHandler{}
	}
	f.edus[eduType] = h
}

// receiveEDU hands one EDU of a transaction from origin to its handler.
// An EDU of a type this server does not know is ignored (spec: "Receiving
// servers SHOULD ignore EDUs they do not understand"), and a handler's
// error is logged, never answered: the transaction's PDUs still count.
func (f *FederationAPI) receiveEDU(ctx context.Context, origin spec.ServerName, eduType string, content json.RawMessage) {
	h, ok := f.edus[eduType]
	if !ok {
		f.log.WithField("origin", origin).WithField("edu_type", eduType).Debug("ignoring an EDU of an unknown type")
		return
	}
	if err := h(ctx, origin, content); err != nil {
		f.log.WithError(err).WithField("origin", origin).WithField("edu_type", eduType).Warn("EDU not taken in")
	}
}
