//! `create_join_token`: the token behind the join string init prints.

use std::time::{Duration, SystemTime};

use super::Runner;
use super::{InitStep, Seq};
use crate::sequences::runner::StepReport;
use crate::tokens::{self, INIT_TOKEN_DESCRIPTION, INIT_TOKEN_TTL};

/// An init token that stays valid this long is reused: a re-run of init
/// (every boot of an appliance runs it) mints no new token while one is
/// valid.
const REUSE_MARGIN: Duration = Duration::from_secs(300);

/// Done when an init token valid for at least another hour exists.
pub(super) async fn create_join_token(run: &Runner, seq: &Seq<'_>) -> anyhow::Result<StepReport> {
    run.step(
        InitStep::CreateJoinToken,
        // Longer than the wait for the bootstrap signer inside create.
        tokens::SIGN_WAIT + Duration::from_secs(30),
        || async { Ok(init_token(seq).await?.is_some()) },
        || async {
            tokens::create(
                &seq.client().await?,
                INIT_TOKEN_TTL,
                INIT_TOKEN_DESCRIPTION,
                tokens::TokenKind::default(),
            )
            .await?;
            Ok(())
        },
    )
    .await
}

/// The ID of a valid token init made, if there is one.
async fn init_token(seq: &Seq<'_>) -> anyhow::Result<Option<String>> {
    let all = tokens::list(&seq.client().await?).await?;
    Ok(all
        .into_iter()
        .filter(|t| t.description == INIT_TOKEN_DESCRIPTION && tokens::valid_for(t, REUSE_MARGIN))
        .max_by(|a, b| a.expiration.cmp(&b.expiration))
        .map(|t| t.id))
}

/// The join string of init's token (after `create_join_token`).
pub(super) async fn init_join_string(seq: &Seq<'_>) -> anyhow::Result<String> {
    let client = seq.client().await?;
    let id = init_token(seq).await?.ok_or_else(|| {
        anyhow::anyhow!("init's join token is gone; make one with 'selfnode token create'")
    })?;
    // init_token keeps only tokens valid for another hour: the wait ends
    // long before this one expires.
    tokens::wait_signed(&client, &id, SystemTime::now() + REUSE_MARGIN).await?;
    let token = tokens::get(&client, &id).await?.ok_or_else(|| {
        anyhow::anyhow!("init's join token {id} is gone; make one with 'selfnode token create'")
    })?;
    tokens::join_string(&client, &token, false).await
}
