//! The in-process control plane of the all-in-one binary: the bridge calls the webapp's internal logic
//! directly instead of over HTTPS, with the same types and the same checks.

use async_trait::async_trait;
use portico_bridge::ControlPlane;
use portico_proto::control::{
    ClaimRequest, ControlError, EndRequest, HostKeyReport, SyncRequest, SyncResponse, Target, TokenKeys,
    ViewerClaimRequest, ViewerGrant, ViewerLeft, WorkspaceEndpoint,
};
use portico_proto::files::TransferReport;
use portico_webapp::Internal;
use portico_webapp::internal::CallerBridge;

/// The webapp's internal logic, called as the bridge identity this process registered at start.
pub struct LocalControl(Internal, CallerBridge);

impl LocalControl {
    /// Register the in-process bridge (with the node secret, like any bridge) and act as it.
    pub async fn register(
        internal: Internal,
        node_secret: &str,
        name: &str,
        route: Option<String>,
    ) -> anyhow::Result<Self> {
        let req = portico_proto::control::BridgeRegisterRequest {
            name: name.to_owned(),
            route,
        };
        let registered = internal
            .register_bridge(node_secret, &req, "in-process")
            .await
            .map_err(|e| anyhow::anyhow!("register the in-process bridge: {e}"))?;
        Ok(LocalControl(
            internal,
            CallerBridge {
                id: registered.bridge_id,
            },
        ))
    }
}

#[async_trait]
impl ControlPlane for LocalControl {
    async fn token_keys(&self) -> Result<TokenKeys, ControlError> {
        Ok(self.0.token_keys())
    }

    async fn claim(&self, session_id: &str, req: &ClaimRequest) -> Result<Target, ControlError> {
        self.0.claim(&self.1, session_id, req).await
    }

    async fn record_host_key(&self, session_id: &str, report: &HostKeyReport) -> Result<(), ControlError> {
        self.0.record_host_key(&self.1, session_id, report).await
    }

    async fn record_transfer(&self, session_id: &str, report: &TransferReport) -> Result<(), ControlError> {
        self.0.record_transfer(&self.1, session_id, report).await
    }

    async fn end_session(&self, session_id: &str, req: &EndRequest) -> Result<(), ControlError> {
        self.0.end_session(&self.1, session_id, req).await
    }

    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse, ControlError> {
        self.0.sync(&self.1, req).await
    }

    async fn workspace(&self, session_id: &str) -> Result<Option<WorkspaceEndpoint>, ControlError> {
        self.0.workspace(&self.1, session_id).await
    }

    async fn claim_viewer(&self, session_id: &str, req: &ViewerClaimRequest) -> Result<ViewerGrant, ControlError> {
        self.0.claim_viewer(&self.1, session_id, req).await
    }

    async fn viewer_left(&self, session_id: &str, viewer_id: &str, req: &ViewerLeft) -> Result<(), ControlError> {
        self.0.viewer_left(&self.1, session_id, viewer_id, &req.reason).await
    }
}
