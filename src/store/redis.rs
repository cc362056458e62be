//! Redis backend: standalone (`redis://`, `rediss://`) through a self-reconnecting
//! `ConnectionManager`, or Cluster through `ClusterClient`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::OnceCell;

use super::StoreError;

/// Bound on any single Redis round trip, so a hung server fails fast instead of
/// stacking up requests.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    // The cluster client has no lazy constructor; the cell connects on first use and
    // stays empty after a failure, so the next call retries.
    Cluster(Arc<(ClusterClient, OnceCell<ClusterConnection>)>),
}

/// A Redis store handle; cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// A standalone server.
    pub fn standalone(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(1));
        let manager =
            ConnectionManager::new_lazy_with_config(client, config).map_err(unavailable)?;
        Ok(RedisStore {
            conn: Conn::Standalone(manager),
        })
    }

    /// A Cluster, from its seed nodes.
    pub fn cluster(nodes: &[String]) -> Result<RedisStore, StoreError> {
        let client = ClusterClient::builder(nodes.iter().map(String::as_str))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(unavailable)?;
        Ok(RedisStore {
            conn: Conn::Cluster(Arc::new((client, OnceCell::new()))),
        })
    }

    /// `PING`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let cmd = redis::cmd("PING");
        let reply: String = match &self.conn {
            Conn::Standalone(m) => cmd.query_async(&mut m.clone()).await,
            Conn::Cluster(cell) => {
                let (client, conn) = &**cell;
                let conn = conn
                    .get_or_try_init(|| client.get_async_connection())
                    .await
                    .map_err(unavailable)?;
                cmd.query_async(&mut conn.clone()).await
            }
        }
        .map_err(unavailable)?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "unexpected PING reply {reply:?}"
            )))
        }
    }
}
