//! `getLiveSession {connectionId}` -> whether a live session is bound to a peer that is still
//! there, on any instance.

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
    let live = caller
        .context
        .live
        .is_live(&caller.connection(&params.connection_id))
        .await?;
    Ok(super::boolean(live))
}
