//! JSON bodies whose rejections speak the API's error shape (axum's own are plain text, and
//! call a wrong shape 422 where the API says 400 `invalid_json`).

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;

/// `axum::Json`, with every rejection mapped into [`ApiError`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_error(rejection, state.config.server.max_body_bytes)),
        }
    }
}

fn json_error(rejection: JsonRejection, limit_bytes: usize) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType,
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::InvalidJson(format!("the body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiError::InvalidJson(format!(
            "the body does not have the expected shape: {}",
            e.body_text()
        )),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge { limit_bytes }
        }
        other => {
            ApiError::InvalidJson(format!("the body could not be read: {}", other.body_text()))
        }
    }
}
