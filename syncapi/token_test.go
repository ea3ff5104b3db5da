package syncapi

import "testing"

func TestParseToken(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Token
		wantErr bool
	}{
		{"current", "s1_2_3_4_5_6_7", Token{PDU: 1, AccountData: 2, Typing: 3, Receipt: 4, Presence: 5, DeviceLists: 6, ToDevice: 7}, false},
		{"before to-device", "s1_2_3_4_5_6", Token{PDU: 1, AccountData: 2, Typing: 3, Receipt: 4, Presence: 5, DeviceLists: 6}, false},
		{"before device lists", "s1_2_3_4_5", Token{PDU: 1, AccountData: 2, Typing: 3, Receipt: 4, Presence: 5}, false},
		{"before typing, receipts and presence", "s1_2", Token{PDU: 1, AccountData: 2}, false},
		{"before account data", "s7", Token{PDU: 7}, false},
		{"from a later version", "s1_2_3_4_5_6_7_8", Token{PDU: 1, AccountData: 2, Typing: 3, Receipt: 4, Presence: 5, DeviceLists: 6, ToDevice: 7}, false},
		{"typing from the clock", "s10_0_1767225600000_0_0", Token{PDU: 10, Typing: 1767225600000}, false},
		{"pagination token", "t1_2", Token{}, true},
		{"negative", "s-1_0", Token{}, true},
		{"negative later field", "s1_0_0_-4", Token{}, true},
		{"not a number", "sx", Token{}, true},
		{"empty field", "s1__3", Token{}, true},
		{"empty", "", Token{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseToken(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("ParseToken(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.wantErr)
			}
			if err != nil {
				return
			}
			if back, err := ParseToken(got.String()); err != nil || back != got {
				t.Errorf("round trip of %v through %q gave %v, %v", got, got.String(), back, err)
			}
		})
	}
	if tt, err := ParseTopoToken("t5_9"); err != nil || tt != (TopoToken{5, 9}) {
		t.Errorf("ParseTopoToken: %v %v", tt, err)
	}
	for _, bad := range []string{"s5_9", "t5", "tx_1"} {
		if _, err := ParseTopoToken(bad); err == nil {
			t.Errorf("ParseTopoToken(%q) succeeded", bad)
		}
	}
}

func TestTokenOrder(t *testing.T) {
	a := Token{PDU: 5, AccountData: 1, Typing: 100, Receipt: 2, Presence: 3}
	for _, b := range []Token{
		{PDU: 6, AccountData: 1, Typing: 100, Receipt: 2, Presence: 3},
		{PDU: 5, AccountData: 1, Typing: 101, Receipt: 2, Presence: 3},
		{PDU: 5, AccountData: 1, Typing: 100, Receipt: 3, Presence: 3},
		{PDU: 5, AccountData: 1, Typing: 100, Receipt: 2, Presence: 4},
	} {
		if !b.After(a) || a.After(b) {
			t.Errorf("%v should be after %v and not the reverse", b, a)
		}
		if a.Max(b) != b || b.Max(a) != b {
			t.Errorf("max of %v and %v is not the later", a, b)
		}
	}
	if a.After(a) {
		t.Errorf("%v is after itself", a)
	}
}
