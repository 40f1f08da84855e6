//! The SQL of events: batch inserts, filtered pages newest first, pruning in bounded batches, and the
//! conditional update that reports each agent that stops responding exactly once across webapps.

use std::sync::Arc;

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::Db;
use crate::events::Event;

/// Filters and page of [`Db::events`].
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Any of these types (none: every type).
    pub types: Vec<String>,
    /// Events about this user or caused by them.
    pub user_id: Option<String>,
    pub connection_id: Option<String>,
    pub session_id: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

/// A stored event, as read back (its type is text: a newer webapp may have written a type this one does
/// not know).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventRecord {
    pub id: String,
    /// Unix milliseconds.
    pub at: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub actor_id: Option<String>,
    pub client_addr: Option<String>,
    pub user_id: Option<String>,
    pub connection_id: Option<String>,
    pub session_id: Option<String>,
    pub details: serde_json::Value,
}

const EVENT_COLS: &str = "id, at, event_type, actor_id, client_addr, user_id, connection_id, session_id, details";

fn record(r: &AnyRow) -> sqlx::Result<EventRecord> {
    let details: String = r.try_get("details")?;
    Ok(EventRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        event_type: r.try_get("event_type")?,
        actor_id: r.try_get("actor_id")?,
        client_addr: r.try_get("client_addr")?,
        user_id: r.try_get("user_id")?,
        connection_id: r.try_get("connection_id")?,
        session_id: r.try_get("session_id")?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
    })
}

/// Text or integer parameters of a query built piece by piece.
enum Param {
    Text(String),
    Int(i64),
}

impl Db {
    /// Insert `events` in one transaction, `rows_per_statement` rows per `INSERT`.
    pub async fn insert_events(&self, events: &[Arc<Event>], rows_per_statement: usize) -> sqlx::Result<()> {
        let mut tx = self.begin_write().await?;
        for chunk in events.chunks(rows_per_statement.max(1)) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = i * 9;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7,
                        b + 8,
                        b + 9
                    )
                })
                .collect();
            let sql = format!("INSERT INTO events ({EVENT_COLS}) VALUES {}", rows.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(e.id.clone())
                    .bind(e.at)
                    .bind(e.event_type.as_str())
                    .bind(e.actor_id.clone())
                    .bind(e.client_addr.clone())
                    .bind(e.user_id.clone())
                    .bind(e.connection_id.clone())
                    .bind(e.session_id.clone())
                    .bind(serde_json::to_string(&e.details).unwrap_or_else(|_| "{}".into()));
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// A page of events matching `q`, newest first, and the number of all matches.
    pub async fn events(&self, q: &EventQuery) -> sqlx::Result<(Vec<EventRecord>, i64)> {
        let mut params = Vec::new();
        let next = |p: Param, params: &mut Vec<Param>| {
            params.push(p);
            format!("${}", params.len())
        };
        let mut clauses = Vec::new();
        if !q.types.is_empty() {
            let list: Vec<String> = q
                .types
                .iter()
                .map(|t| next(Param::Text(t.clone()), &mut params))
                .collect();
            clauses.push(format!("event_type IN ({})", list.join(", ")));
        }
        if let Some(u) = &q.user_id {
            let a = next(Param::Text(u.clone()), &mut params);
            let b = next(Param::Text(u.clone()), &mut params);
            clauses.push(format!("(user_id = {a} OR actor_id = {b})"));
        }
        if let Some(c) = &q.connection_id {
            clauses.push(format!("connection_id = {}", next(Param::Text(c.clone()), &mut params)));
        }
        if let Some(s) = &q.session_id {
            clauses.push(format!("session_id = {}", next(Param::Text(s.clone()), &mut params)));
        }
        if let Some(t) = q.since {
            clauses.push(format!("at >= {}", next(Param::Int(t), &mut params)));
        }
        if let Some(t) = q.until {
            clauses.push(format!("at < {}", next(Param::Int(t), &mut params)));
        }
        let filter = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let count_sql = format!("SELECT COUNT(*) FROM events{filter}");
        let limit = next(Param::Int(q.limit), &mut params);
        let offset = next(Param::Int(q.offset), &mut params);
        let page_sql =
            format!("SELECT {EVENT_COLS} FROM events{filter} ORDER BY at DESC, id DESC LIMIT {limit} OFFSET {offset}");
        let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql));
        for p in &params {
            page = match p {
                Param::Text(s) => page.bind(s.clone()),
                Param::Int(i) => page.bind(*i),
            };
        }
        let rows = page.fetch_all(&self.pool).await?;
        let items = rows.iter().map(record).collect::<sqlx::Result<Vec<_>>>()?;
        // The count binds the filter's parameters only (limit and offset are the last two).
        let mut count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count_sql));
        for p in &params[..params.len() - 2] {
            count = match p {
                Param::Text(s) => count.bind(s.clone()),
                Param::Int(i) => count.bind(*i),
            };
        }
        let total = count.fetch_one(&self.pool).await?;
        Ok((items, total))
    }

    /// Delete at most `batch` of the oldest events from before `before_ms`; returns how many went.
    pub async fn prune_events(&self, before_ms: i64, batch: i64) -> sqlx::Result<u64> {
        let r =
            sqlx::query("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 ORDER BY at LIMIT $2)")
                .bind(before_ms)
                .bind(batch)
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected())
    }

    /// Agents without a heartbeat since `alive_since` that were not reported down since their last
    /// heartbeat: marked reported at `now` and returned (id, name). One conditional `UPDATE`, so of all
    /// webapps running this at once exactly one gets each agent.
    pub async fn agents_newly_down(&self, alive_since: i64, now: i64) -> sqlx::Result<Vec<(String, String)>> {
        sqlx::query_as(
            "UPDATE agents SET down_reported_at = $1 \
             WHERE last_heartbeat_at < $2 AND (down_reported_at IS NULL OR down_reported_at < last_heartbeat_at) \
             RETURNING id, name",
        )
        .bind(now)
        .bind(alive_since)
        .fetch_all(&self.pool)
        .await
    }
}
