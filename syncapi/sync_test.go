package syncapi

import (
	"encoding/json"
	"testing"
)

// The pre-encoded unchanged answer must say exactly what encoding the
// response would.
func TestUnchangedJSON(t *testing.T) {
	for _, tok := range []string{"s0_0_0_0_0", "s1_2_3_4_5", "s2140_0_1795639714175_0_2001"} {
		t.Run(tok, func(t *testing.T) {
			r := newSyncResponse()
			r.NextBatch = tok
			want, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if got := unchangedJSON[0] + tok + unchangedJSON[1]; got != string(want) {
				t.Fatalf("pre-encoded\n%s\nencoded\n%s", got, want)
			}
		})
	}
}
