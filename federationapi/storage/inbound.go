package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// InboundTxn returns the response recorded for origin's transaction txnID,
// "" when none is.
func (s *Storage) InboundTxn(ctx context.Context, origin, txnID string) (string, error) {
	var resp string
	err := s.db.QueryRow(ctx, `SELECT response FROM federationapi_inbound_txns WHERE origin = $1 AND txn_id = $2`, origin, txnID).Scan(&resp)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("inbound transaction %s of %s: %w", txnID, origin, err)
	}
	return resp, nil
}

// RecordInboundTxn records the response to origin's transaction txnID. A
// response already recorded is kept: it is the one the origin may have
// seen.
func (s *Storage) RecordInboundTxn(ctx context.Context, origin, txnID, response string, now int64) error {
	_, err := s.db.Exec(ctx, `INSERT INTO federationapi_inbound_txns (origin, txn_id, response, received_ts)
		VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING`, origin, txnID, response, now)
	if err != nil {
		return fmt.Errorf("record inbound transaction %s of %s: %w", txnID, origin, err)
	}
	return nil
}

// PruneInboundTxns forgets the transactions processed before the time
// before (ms), and says how many.
func (s *Storage) PruneInboundTxns(ctx context.Context, before int64) (int64, error) {
	res, err := s.db.Exec(ctx, `DELETE FROM federationapi_inbound_txns WHERE received_ts < $1`, before)
	if err != nil {
		return 0, fmt.Errorf("prune inbound transactions: %w", err)
	}
	return res.RowsAffected()
}
