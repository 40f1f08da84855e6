//! The in-process control plane of the all-in-one binary: the bridge calls the webapp's internal logic
//! directly instead of over HTTPS, with the same types and the same checks.

use async_trait::async_trait;
use portico_bridge::ControlPlane;
use portico_proto::control::{
    ClaimRequest, ControlError, EndRequest, HostKeyReport, SyncRequest, SyncResponse, Target, TokenKeys,
    WorkspaceEndpoint,
};
use portico_webapp::Internal;

pub struct LocalControl(Internal);

impl LocalControl {
    pub fn new(internal: Internal) -> Self {
        LocalControl(internal)
    }
}

#[async_trait]
impl ControlPlane for LocalControl {
    async fn token_keys(&self) -> Result<TokenKeys, ControlError> {
        Ok(self.0.token_keys())
    }

    async fn claim(&self, session_id: &str, req: &ClaimRequest) -> Result<Target, ControlError> {
        self.0.claim(session_id, req).await
    }

    async fn record_host_key(&self, session_id: &str, report: &HostKeyReport) -> Result<(), ControlError> {
        self.0.record_host_key(session_id, report).await
    }

    async fn end_session(&self, session_id: &str, req: &EndRequest) -> Result<(), ControlError> {
        self.0.end_session(session_id, req).await
    }

    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, ControlError> {
        self.0.sync(req).await
    }

    async fn workspace(&self, session_id: &str) -> Result<Option<WorkspaceEndpoint>, ControlError> {
        self.0.workspace(session_id).await
    }
}
