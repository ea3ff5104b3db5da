package syncapi

import "testing"

func TestParseToken(t *testing.T) {
	tests := []struct {
		in      string
		want    Token
		wantErr bool
	}{
		{"s1_2", Token{1, 2}, false},
		{"s7", Token{7, 0}, false},
		{"s1_2_3_4", Token{1, 2}, false}, // fields of later streams are ignored
		{"t1_2", Token{}, true},
		{"s-1_0", Token{}, true},
		{"sx", Token{}, true},
		{"", Token{}, true},
	}
	for _, tt := range tests {
		got, err := ParseToken(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseToken(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil {
			if back, _ := ParseToken(got.String()); back != got {
				t.Errorf("round trip of %v gave %v", got, back)
			}
		}
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
