//! `GET/POST /v1/subscriptions`, `DELETE /v1/subscriptions/{name}`,
//! `POST /v1/subscriptions/{name}/resume`, behind the bearer token.

use std::sync::Arc;

use bytes::Bytes;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{bearer, IngressError};
use crate::app::Context;
use crate::forward::{ForwardError, ForwardService, NewSubscription};

impl From<ForwardError> for IngressError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Invalid(m) => IngressError::Invalid(m),
            ForwardError::NotFound(n) => {
                IngressError::NotFound(format!("subscription `{n}` not found"))
            }
            ForwardError::Exists(n) => {
                IngressError::Conflict(format!("subscription `{n}` already exists"))
            }
            ForwardError::Queue(q) => q.into(),
        }
    }
}

fn answer(r: Result<Response, IngressError>) -> Response {
    r.unwrap_or_else(IngressError::into_response)
}

/// The subscription routes.
pub fn routes(
    ctx: Context,
    forward: Arc<ForwardService>,
) -> warp::filters::BoxedFilter<(Response,)> {
    let auth = bearer(&ctx);
    let f1 = forward.clone();
    let list = warp::path!("v1" / "subscriptions")
        .and(warp::get())
        .and(auth.clone())
        .then(move || {
            let f = f1.clone();
            async move {
                answer(
                    async {
                        Ok(
                            warp::reply::json(&serde_json::json!({ "data": f.list().await? }))
                                .into_response(),
                        )
                    }
                    .await,
                )
            }
        });
    let f2 = forward.clone();
    let create = warp::path!("v1" / "subscriptions")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::body::content_length_limit(64 * 1024))
        .and(warp::body::bytes())
        .then(move |body: Bytes| {
            let f = f2.clone();
            async move {
                answer(
                    async {
                        let req: NewSubscription = serde_json::from_slice(&body).map_err(|e| {
                            IngressError::BadRequest(format!("invalid JSON body: {e}"))
                        })?;
                        let s = f.create(req).await?;
                        Ok(
                            warp::reply::with_status(warp::reply::json(&s), StatusCode::CREATED)
                                .into_response(),
                        )
                    }
                    .await,
                )
            }
        });
    let f3 = forward.clone();
    let delete = warp::path!("v1" / "subscriptions" / String)
        .and(warp::delete())
        .and(auth.clone())
        .then(move |name: String| {
            let f = f3.clone();
            async move {
                answer(
                    async {
                        let dropped = f.delete(&name).await?;
                        Ok(warp::reply::json(
                            &serde_json::json!({ "deleted": name, "parked_dropped": dropped }),
                        )
                        .into_response())
                    }
                    .await,
                )
            }
        });
    let f4 = forward;
    let resume = warp::path!("v1" / "subscriptions" / String / "resume")
        .and(warp::post())
        .and(auth)
        .then(move |name: String| {
            let f = f4.clone();
            async move {
                answer(
                    async {
                        let released = f.resume(&name).await?;
                        Ok(warp::reply::json(
                            &serde_json::json!({ "resumed": name, "released": released }),
                        )
                        .into_response())
                    }
                    .await,
                )
            }
        });
    list.or(create)
        .unify()
        .or(delete)
        .unify()
        .or(resume)
        .unify()
        .boxed()
}
