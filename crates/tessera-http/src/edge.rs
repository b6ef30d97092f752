//! The authentication edge as a library, for the other transports on this listener (the web
//! application): signing in, the access of a token, refreshing, switching context, signing
//! out, and keeping authorization codes and launch contexts — each through the same lockout,
//! rate limit, session store and audit as the token endpoint (`auth.rs`).

use crate::auth::{token_response, Origin};
use crate::AppState;
use http::{Extensions, HeaderMap};
use std::sync::Arc;
use tessera_auth::{AuthAction, AuthEvent, AuthSubject, Claims, CodeGrant, LaunchContext, Session, TokenResponse};
use tessera_engine::{Access, Engine};

/// A handle on the authentication edge of one server (cheap to clone).
#[derive(Clone)]
pub struct Edge {
    state: AppState,
}

/// Why the edge refused: a message for the person at the screen, and whether to wait.
#[derive(Debug, Clone)]
pub struct EdgeRefusal {
    pub message: String,
    pub retry_after: Option<u64>,
    /// The server could not decide (the database did not answer).
    pub unavailable: bool,
}

impl Edge {
    pub(crate) fn new(state: AppState) -> Edge {
        Edge { state }
    }

    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// The FHIR base URL the server announces (`…/fhir`).
    pub fn fhir_base(&self) -> String {
        self.state.engine.config().base_url.trim_end_matches('/').to_string()
    }

    /// How long a sign-in session lasts at most (seconds).
    pub fn session_seconds(&self) -> u64 {
        self.state.auth.policy.refresh_seconds
    }

    async fn grant(&self, extensions: &Extensions, headers: &HeaderMap, form: String) -> Result<TokenResponse, EdgeRefusal> {
        let origin = Origin::of(extensions, headers, &self.state.auth.policy);
        token_response(&self.state, &origin, &form, None).await.map_err(|r| EdgeRefusal {
            message: r.error.error_description.clone(),
            retry_after: r.retry_after,
            unavailable: r.unavailable,
        })
    }

    /// Signs a person in with a password (a user, or a patient's portal account): the
    /// password grant of the token endpoint, with its lockout, rate limit and audit.
    /// `role`/`organisation`/`location` pick a role assignment (none: the first).
    pub async fn sign_in(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
        username: &str,
        password: &str,
        context: (Option<&str>, Option<&str>, Option<&str>),
    ) -> Result<TokenResponse, EdgeRefusal> {
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", tessera_auth::PASSWORD_GRANT).append_pair("username", username).append_pair("password", password);
            let (role, organisation, location) = context;
            for (k, v) in [("role", role), ("organisation", organisation), ("location", location)] {
                if let Some(v) = v {
                    form.append_pair(k, v);
                }
            }
            form.finish()
        };
        self.grant(extensions, headers, form).await
    }

    /// A new access token for the same session (the refresh token rotates).
    pub async fn refresh(&self, extensions: &Extensions, headers: &HeaderMap, refresh_token: &str) -> Result<TokenResponse, EdgeRefusal> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", tessera_auth::REFRESH_TOKEN_GRANT)
            .append_pair("refresh_token", refresh_token)
            .finish();
        self.grant(extensions, headers, form).await
    }

    /// Switches the session to another role assignment (the old token stops working).
    pub async fn switch(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
        access_token: &str,
        role: &str,
        organisation: &str,
        location: Option<&str>,
    ) -> Result<TokenResponse, EdgeRefusal> {
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", tessera_auth::SWITCH_CONTEXT_GRANT)
                .append_pair("access_token", access_token)
                .append_pair("role", role)
                .append_pair("organisation", organisation);
            if let Some(l) = location {
                form.append_pair("location", l);
            }
            form.finish()
        };
        self.grant(extensions, headers, form).await
    }

    /// The verified claims and engine access of a token this server issued, if it is still
    /// valid (signature, expiry, the subject's standing, not revoked).
    pub async fn access(&self, token: &str) -> Option<(Claims, Access)> {
        let claims = self.state.config.authenticator.verify_detailed(token, tessera_auth::now()).ok()?;
        let access = Access::from_claims(&claims, &self.state.engine.domain()).ok()?;
        match crate::auth::is_revoked(&self.state, &claims).await {
            Ok(false) => Some((claims, access)),
            _ => None,
        }
    }

    /// Ends the session of `claims` (every token of it stops working), and audits it.
    pub async fn sign_out(&self, extensions: &Extensions, headers: &HeaderMap, claims: &Claims) {
        let origin = Origin::of(extensions, headers, &self.state.auth.policy);
        if let Some(sid) = &claims.sid {
            let key = tessera_auth::session_key(sid);
            if let Ok(Some(value)) = self.state.engine.setting(&key).await {
                if let Some(mut session) = Session::parse(&value) {
                    session.revoke("signed-out", tessera_auth::now());
                    if let Err(e) = crate::auth::save_session(&self.state, &session).await {
                        tracing::error!(error = %e, "cannot end a session");
                    }
                }
            }
        }
        let domain = self.state.engine.domain();
        let event = AuthEvent::granted(AuthAction::SignOut, AuthSubject::of_claims(claims, &domain), origin.address.clone(), "signed out");
        crate::auth::record(&self.state, &event).await;
    }

    /// Keeps an authorization code's grant for [`tessera_auth::CODE_SECONDS`]; returns the code.
    pub async fn issue_code(&self, grant: &CodeGrant) -> Result<String, tessera_engine::FhirError> {
        let code = tessera_auth::new_code();
        let value = serde_json::to_string(grant).map_err(|e| tessera_engine::FhirError::internal(e.to_string()))?;
        self.state.engine.set_setting(&tessera_auth::code_key(&code), &value).await?;
        Ok(code)
    }

    /// Keeps an EHR launch context; returns the launch id the app is sent with.
    pub async fn issue_launch(&self, launch: &LaunchContext) -> Result<String, tessera_engine::FhirError> {
        let id = tessera_auth::new_code();
        let value = serde_json::to_string(launch).map_err(|e| tessera_engine::FhirError::internal(e.to_string()))?;
        self.state.engine.set_setting(&tessera_auth::launch_key(&id), &value).await?;
        Ok(id)
    }

    /// The launch context of a launch id, while it lasts.
    pub async fn launch(&self, id: &str) -> Option<LaunchContext> {
        let value = self.state.engine.setting(&tessera_auth::launch_key(id)).await.ok()??;
        serde_json::from_str::<LaunchContext>(&value).ok().filter(|l| l.exp > tessera_auth::now())
    }
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Edge")
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Edge>();
    is::<Arc<Edge>>();
}
