//! Who is what right now: each node's role, the node it streams from and its timeline, asked
//! live (for `status`, which must show the topology a failover left, not the spec's).

use std::time::Duration;

use serde::Serialize;

use crate::pg::connect;
use crate::spec::Node;

const ASK: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeNow {
    pub node: String,
    /// `primary`, `standby`, or `down` (it did not answer).
    pub state: String,
    /// The node it streams from (by its conninfo's host and port), or the walreceiver's
    /// `host:port` when no spec node has that address.
    pub upstream: Option<String>,
    pub timeline: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Ask every node.
pub async fn sample(nodes: &[Node]) -> Vec<NodeNow> {
    let mut out = Vec::new();
    for n in nodes {
        let asked = tokio::time::timeout(ASK, async {
            let c = connect(&n.endpoint()).await?;
            let r = c
                .query_one(
                    "SELECT pg_is_in_recovery(),
                            (SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'),
                            CASE WHEN pg_is_in_recovery()
                                 THEN (SELECT received_tli::bigint FROM pg_stat_wal_receiver)
                                 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END",
                    &[],
                )
                .await?;
            anyhow::Ok((r.get::<_, bool>(0), r.get::<_, Option<String>>(1), r.get::<_, Option<i64>>(2)))
        })
        .await;
        out.push(match asked {
            Ok(Ok((recovery, sender, timeline))) => NodeNow {
                node: n.name.clone(),
                state: if recovery { "standby" } else { "primary" }.into(),
                upstream: sender.map(|s| upstream_name(&s, nodes)),
                timeline,
                problem: None,
            },
            Ok(Err(e)) => down(n, format!("{e:#}")),
            Err(_) => down(n, format!("no answer within {ASK:?}")),
        });
    }
    out
}

fn down(n: &Node, why: String) -> NodeNow {
    NodeNow {
        node: n.name.clone(),
        state: "down".into(),
        upstream: None,
        timeline: None,
        problem: Some(why.lines().next().unwrap_or_default().to_string()),
    }
}

/// Pure: the spec node at `host:port` (a walreceiver's sender), or the address itself.
pub fn upstream_name(sender: &str, nodes: &[Node]) -> String {
    nodes
        .iter()
        .find(|n| format!("{}:{}", n.conninfo.host(), n.conninfo.port()) == sender)
        .map(|n| n.name.clone())
        .unwrap_or_else(|| sender.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sender_address_is_named_by_the_spec() {
        let text = "name = \"t\"\n[replication]\nuser = \"repl\"\n\
            [nodes.old]\nrole = \"primary\"\nconninfo = \"host=10.0.0.1 port=5432\"\ndata_dir = \"/a\"\n\
            [nodes.new]\nrole = \"target\"\nupstream = \"old\"\nconninfo = \"host=10.0.0.2 port=6432\"\ndata_dir = \"/b\"\n";
        let spec = crate::spec::parse(std::path::Path::new("/x.toml"), text).unwrap();
        assert_eq!(super::upstream_name("10.0.0.2:6432", &spec.nodes), "new");
        assert_eq!(
            super::upstream_name("10.0.0.9:5432", &spec.nodes),
            "10.0.0.9:5432"
        );
    }
}
