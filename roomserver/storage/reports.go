package storage

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"myelin/internal/sqldb"
	rsapi "myelin/roomserver/api"
)

const reportCols = `report_id, kind, room_id, event_id, target_user_id, reporter, reason, score, received_ts`

// AddReport stores a report and returns its ID.
func (s *Storage) AddReport(ctx context.Context, r rsapi.Report) (int64, error) {
	var id int64
	err := s.db.WithTx(ctx, func(tx *sqldb.Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO roomserver_reports (kind, room_id, event_id, target_user_id, reporter, reason, score, received_ts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING report_id`,
			r.Kind, r.RoomID, r.EventID, r.TargetUserID, r.Reporter, r.Reason, r.Score, r.ReceivedTS).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("store %s report of %s: %w", r.Kind, r.Reporter, err)
	}
	return id, nil
}

func scanReport(sc interface{ Scan(...any) error }) (*rsapi.Report, error) {
	r := &rsapi.Report{}
	var score sql.NullInt64
	if err := sc.Scan(&r.ID, &r.Kind, &r.RoomID, &r.EventID, &r.TargetUserID, &r.Reporter, &r.Reason, &score, &r.ReceivedTS); err != nil {
		return nil, err
	}
	if score.Valid {
		r.Score = &score.Int64
	}
	return r, nil
}

// Reports returns one page of the reports of q.Kind matching q, and how
// many match in all.
func (s *Storage) Reports(ctx context.Context, q rsapi.ReportsQuery) ([]rsapi.Report, int, error) {
	where := []string{"kind = $1"}
	args := []any{q.Kind}
	for col, v := range map[string]string{"room_id": q.RoomID, "reporter": q.Reporter, "target_user_id": q.TargetUserID} {
		if v != "" {
			args = append(args, v)
			where = append(where, fmt.Sprintf("%s = $%d", col, len(args)))
		}
	}
	cond := strings.Join(where, " AND ")
	var total int
	if err := s.db.QueryRow(ctx, `SELECT COUNT(*) FROM roomserver_reports WHERE `+cond, args...).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count reports: %w", err)
	}
	order := "DESC"
	if q.Forwards {
		order = "ASC"
	}
	args = append(args, q.Limit, q.From)
	rows, err := s.db.Query(ctx, fmt.Sprintf(`SELECT %s FROM roomserver_reports WHERE %s ORDER BY report_id %s LIMIT $%d OFFSET $%d`,
		reportCols, cond, order, len(args)-1, len(args)), args...)
	if err != nil {
		return nil, 0, fmt.Errorf("list reports: %w", err)
	}
	defer rows.Close()
	out := []rsapi.Report{}
	for rows.Next() {
		r, err := scanReport(rows)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, *r)
	}
	return out, total, rows.Err()
}

// Report returns one report (ErrNotFound).
func (s *Storage) Report(ctx context.Context, id int64) (*rsapi.Report, error) {
	r, err := scanReport(s.db.QueryRow(ctx, `SELECT `+reportCols+` FROM roomserver_reports WHERE report_id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return r, err
}

// DeleteReport deletes one report (ErrNotFound).
func (s *Storage) DeleteReport(ctx context.Context, id int64) error {
	res, err := s.db.Exec(ctx, `DELETE FROM roomserver_reports WHERE report_id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete report %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return ErrNotFound
	}
	return nil
}
