//! `removeLiveSession {connectionId}` -> `true` when this socket's session was ended, `false`
//! when there was none or another socket holds it (a newer binding is never removed).

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::params::ConnectionId;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    let removed = caller
        .context
        .live
        .unbind(caller.socket, &caller.connection(&params.connection_id))
        .await?;
    Ok(super::boolean(removed))
}
