//! `POST /v1/emails`, `GET /v1/emails`, `GET /v1/emails/{id}`: the send API
//! and delivery records, behind the bearer token.

use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use super::{bearer, IngressError};
use crate::app::Context;
use crate::email::{EmailError, EmailService, NewEmail};

impl From<EmailError> for IngressError {
    fn from(e: EmailError) -> Self {
        match e {
            EmailError::Invalid(m) => IngressError::Invalid(m),
            EmailError::NotFound(id) => IngressError::NotFound(format!("email {id} not found")),
            EmailError::Queue(q) => q.into(),
            EmailError::Resend(r) => {
                tracing::warn!(error = %r, "resend request failed while serving the API");
                IngressError::Unavailable
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    category: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn answer(r: Result<Response, IngressError>) -> Response {
    r.unwrap_or_else(IngressError::into_response)
}

/// The email routes.
pub fn routes(ctx: Context, service: Arc<EmailService>) -> warp::filters::BoxedFilter<(Response,)> {
    let auth = bearer(&ctx);
    let limit = ctx.cfg.ingress.body_limit;
    let s1 = service.clone();
    let create = warp::path!("v1" / "emails")
        .and(warp::post())
        .and(auth.clone())
        .and(warp::body::content_length_limit(limit))
        .and(warp::body::bytes())
        .then(move |body: Bytes| {
            let s = s1.clone();
            async move {
                answer(
                    async {
                        let req: NewEmail = serde_json::from_slice(&body).map_err(|e| {
                            IngressError::BadRequest(format!("invalid JSON body: {e}"))
                        })?;
                        let created = s.create(req).await?;
                        let status = if created.new {
                            StatusCode::ACCEPTED
                        } else {
                            StatusCode::OK
                        };
                        Ok(
                            warp::reply::with_status(warp::reply::json(&created), status)
                                .into_response(),
                        )
                    }
                    .await,
                )
            }
        });
    let s2 = service.clone();
    let list = warp::path!("v1" / "emails")
        .and(warp::get())
        .and(auth.clone())
        .and(warp::query::<ListQuery>())
        .then(move |q: ListQuery| {
            let s = s2.clone();
            async move {
                answer(
                    async {
                        let limit = q.limit.unwrap_or(50).clamp(1, 500);
                        let (data, next) = s
                            .list(
                                q.status.as_deref(),
                                q.category.as_deref(),
                                q.to.as_deref(),
                                limit,
                                q.cursor.as_deref(),
                            )
                            .await?;
                        Ok(warp::reply::json(
                            &serde_json::json!({ "data": data, "next_cursor": next }),
                        )
                        .into_response())
                    }
                    .await,
                )
            }
        });
    let s3 = service;
    let one = warp::path!("v1" / "emails" / String)
        .and(warp::get())
        .and(auth)
        .then(move |id: String| {
            let s = s3.clone();
            async move {
                answer(async { Ok(warp::reply::json(&s.detail(&id).await?).into_response()) }.await)
            }
        });
    create.or(list).unify().or(one).unify().boxed()
}
