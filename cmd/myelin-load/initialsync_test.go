package main

import (
	"encoding/json"
	"testing"
)

func TestCheckMembers(t *testing.T) {
	const body = `{"next_batch":"s1","rooms":{"join":{"!r:x":{
		"state":{"events":[
			{"type":"m.room.create","state_key":""},
			{"type":"m.room.member","state_key":"@a:x"}]},
		"timeline":{"events":[
			{"type":"m.room.message","sender":"@a:x"},
			{"type":"m.room.member","sender":"@b:x","state_key":"@b:x"},
			{"type":"m.room.message","sender":"@b:x"},
			{"type":"m.room.message","sender":"@c:x"},
			{"type":"m.room.message","sender":"@c:x"}]}}}}}`
	var resp syncResponse
	if err := json.Unmarshal([]byte(body), &resp); err != nil {
		t.Fatal(err)
	}
	senders, missing := checkMembers(&resp, "!r:x")
	// a is in the state, b's join is in the timeline, c is nowhere.
	if senders != 3 || missing != 1 {
		t.Errorf("checkMembers = %d senders, %d missing; want 3, 1", senders, missing)
	}
}
