package syncapi

import "testing"

func TestParseToken(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Token
		wantErr bool
	}{
		{"current", "s1_2_3_4_5_6_7", Token{pduStream: 1, accountDataStream: 2, typingStream: 3, receiptStream: 4, presenceStream: 5, deviceListStream: 6, toDeviceStream: 7}, false},
		{"before to-device", "s1_2_3_4_5_6", Token{pduStream: 1, accountDataStream: 2, typingStream: 3, receiptStream: 4, presenceStream: 5, deviceListStream: 6}, false},
		{"before device lists", "s1_2_3_4_5", Token{pduStream: 1, accountDataStream: 2, typingStream: 3, receiptStream: 4, presenceStream: 5}, false},
		{"before typing, receipts and presence", "s1_2", Token{pduStream: 1, accountDataStream: 2}, false},
		{"before account data", "s7", Token{pduStream: 7}, false},
		{"from a later version", "s1_2_3_4_5_6_7_8", Token{pduStream: 1, accountDataStream: 2, typingStream: 3, receiptStream: 4, presenceStream: 5, deviceListStream: 6, toDeviceStream: 7}, false},
		{"typing from the clock", "s10_0_1767225600000_0_0", Token{pduStream: 10, typingStream: 1767225600000}, false},
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
	a := Token{pduStream: 5, accountDataStream: 1, typingStream: 100, receiptStream: 2, presenceStream: 3}
	for _, b := range []Token{
		{pduStream: 6, accountDataStream: 1, typingStream: 100, receiptStream: 2, presenceStream: 3},
		{pduStream: 5, accountDataStream: 1, typingStream: 101, receiptStream: 2, presenceStream: 3},
		{pduStream: 5, accountDataStream: 1, typingStream: 100, receiptStream: 3, presenceStream: 3},
		{pduStream: 5, accountDataStream: 1, typingStream: 100, receiptStream: 2, presenceStream: 4},
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
