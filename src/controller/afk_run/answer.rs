//! The agent asks, a human answers (SPEC §4.3): the pending request is recorded as
//! `status.question`; the `afk.dev/answer` annotation is checked against it and sent exactly once
//! as `thread.approval.respond` / `thread.user-input.respond` through
//! [`RunReconcile::exactly_once`]; then the annotation is removed.

use kube::ResourceExt;

use super::{
    RunReconcile,
    act::{Refusal, Sent},
};
use crate::{
    adapters::t3::{self, Command},
    controller::Error,
    crd::{
        ANSWER_ANNOTATION, AnswerIntent, Phase, Question, QuestionItem, QuestionKind,
        condition::{events, reasons},
    },
    policy::naming::derived_id,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

impl RunReconcile {
    /// A recorded answer whose respond command is not confirmed sent yet (a crash between
    /// recording and sending): it is re-sent with the same `commandId`.
    pub(super) fn answer_in_flight(&self, request_id: &str) -> bool {
        self.status
            .answer
            .as_ref()
            .is_some_and(|a| a.request_id == request_id && a.sent_at.is_none())
    }

    /// The human's answer from the `afk.dev/answer` annotation, when it answers the recorded
    /// question: `Ok` to send, `Err(why)` when it is stale or malformed (it is then removed with a
    /// Warning Event), `None` when there is none.
    pub(super) fn recorded_answer(&self) -> Option<Result<Respond, String>> {
        let raw = self.run.annotations().get(ANSWER_ANNOTATION)?;
        let question = self.status.question.as_ref()?;
        Some(parse_answer(question, raw))
    }

    /// Record what the agent waits on (read from the thread's activities) and wait for a human.
    pub(super) async fn ask_human(&mut self, message: String) -> Result<(), Error> {
        let Some(thread_id) = self.status.thread_id.clone() else {
            return Ok(());
        };
        let detail = self
            .adapters
            .executor
            .thread(&thread_id)
            .await
            .map_err(Error::from_executor)?;
        let Some(pending) = t3::pending_request(&detail) else {
            // The flags say pending but the activities do not (yet): look again next time.
            return Ok(());
        };
        if self
            .status
            .answer
            .as_ref()
            .is_some_and(|a| a.request_id == pending.request_id)
        {
            // Already answered; T3 has not caught up.
            return Ok(());
        }
        let question = question_from(&pending, self.time());
        let message: String = format!("{message}: {}", question.text)
            .chars()
            .take(1024)
            .collect();
        self.status.question = Some(question);
        self.set_phase(Phase::WaitingForHuman, reasons::WAITING_FOR_ANSWER, message);
        self.save().await
    }

    /// Send the human's answer exactly once: record the intent (deterministic `commandId`),
    /// send, record the receipt, then drop the question and the annotation.
    pub(super) async fn send_answer(&mut self) -> Result<(), Error> {
        let Some(question) = self.status.question.clone() else {
            return Ok(());
        };
        let Some(thread_id) = self.status.thread_id.clone() else {
            return Ok(());
        };
        let respond = match (
            self.answer_in_flight(&question.request_id),
            self.recorded_answer(),
        ) {
            (_, Some(Ok(r))) => r,
            // Recorded, not confirmed sent, and the annotation was removed by hand: nothing left
            // to send; wait for a new answer.
            (true, _) => {
                tracing::warn!("answer recorded but its annotation is gone; waiting for a new answer");
                self.status.answer = None;
                return self.save().await;
            }
            (false, Some(Err(why))) => {
                // Removed before the Event says so: a human who reads the Event and writes a
                // corrected answer must never see it deleted by this removal.
                self.remove_answer_annotation().await?;
                self.event(true, events::INVALID_ANSWER, why).await;
                return Ok(());
            }
            (false, None) => return Ok(()),
        };
        if !self.answer_in_flight(&question.request_id) {
            self.status.answer = Some(AnswerIntent {
                request_id: question.request_id.clone(),
                command_id: derived_id(&[&self.uid(), "answer", &question.request_id]),
                by: respond.by.clone(),
                minted_at: self.time(),
                sent_at: None,
            });
        }
        let command_id = self.status.answer.as_ref().expect("recorded").command_id.clone();
        let created_at = self.now.to_string();
        let request_id = question.request_id.clone();
        let command = match respond.body {
            RespondBody::Decision(decision) => Command::ThreadApprovalRespond {
                command_id,
                thread_id,
                request_id,
                decision,
                created_at,
            },
            RespondBody::Answers(answers) => Command::ThreadUserInputRespond {
                command_id,
                thread_id,
                request_id,
                answers,
                created_at,
            },
        };
        let by = respond.by.as_deref().unwrap_or("a human").to_string();
        let sent = self
            .exactly_once(command, Refusal::Settles, |status, now: Time| {
                if let Some(a) = status.answer.as_mut() {
                    a.sent_at = Some(now);
                }
                status.question = None;
                status.phase = Some(Phase::Working);
                status.reason = Some(reasons::ANSWERED.into());
                status.message = Some(format!("{by} answered; the agent is working"));
            })
            .await?;
        if let Sent::Refused(e) = sent {
            // T3 rejected it for good (a request it no longer knows): say so and wait for the
            // thread to show what it waits on now.
            self.event(
                true,
                events::ANSWER_REJECTED,
                format!("T3 rejected the answer: {e}"),
            )
            .await;
        }
        self.event(
            false,
            reasons::ANSWERED,
            format!("answer to {} sent to the agent", question.request_id),
        )
        .await;
        self.remove_answer_annotation().await
    }

    /// Remove `afk.dev/answer` — only while it still holds the answer this reconcile read (a
    /// JSON patch that tests the value first). A human may have written a new answer since; the
    /// API server then refuses the patch (422) and the new answer stays for the next reconcile.
    pub(super) async fn remove_answer_annotation(&self) -> Result<(), Error> {
        let Some(read) = self.run.annotations().get(ANSWER_ANNOTATION) else {
            return Ok(());
        };
        let path = format!(
            "/metadata/annotations/{}",
            ANSWER_ANNOTATION.replace('~', "~0").replace('/', "~1")
        );
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            {"op": "test", "path": path, "value": read},
            {"op": "remove", "path": path},
        ]))
        .expect("a test-and-remove patch is well formed");
        let removed = self
            .api
            .patch(
                &self.run.name_any(),
                &kube::api::PatchParams::default(),
                &kube::api::Patch::<()>::Json(patch),
            )
            .await;
        match removed {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            // 422 is also how a patched object failing validation is refused: only a changed
            // annotation makes it harmless.
            Err(kube::Error::Api(e)) if e.code == 422 => {
                let now = self.api.get_opt(&self.run.name_any()).await?;
                let current = now.as_ref().and_then(|r| r.annotations().get(ANSWER_ANNOTATION));
                if current == Some(read) {
                    return Err(kube::Error::Api(e).into());
                }
                tracing::info!("the answer annotation changed since it was read; leaving the new one");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// What to send for an answer.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Respond {
    body: RespondBody,
    by: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum RespondBody {
    /// `thread.approval.respond` decision.
    Decision(String),
    /// `thread.user-input.respond` answers by question id.
    Answers(std::collections::BTreeMap<String, serde_json::Value>),
}

/// Read an `afk.dev/answer` annotation against the recorded question (SPEC §4.3): `id` must be
/// the question's `requestId`; approvals take a `decision`; questions take `answers` (by
/// question id) or, for a single question, `text`.
pub(super) fn parse_answer(question: &Question, raw: &str) -> Result<Respond, String> {
    let v: serde_json::Value =
        serde_json::from_str(raw).map_err(|e| format!("afk.dev/answer is not JSON: {e}"))?;
    let id = v
        .get("id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if id != question.request_id {
        return Err(format!(
            "afk.dev/answer names request {id:?}, but the agent waits on {:?}: ignored as stale",
            question.request_id
        ));
    }
    let by = v
        .get("by")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    let body = match question.kind {
        QuestionKind::Approval => {
            let decision = v
                .get("decision")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            if !t3::DECISIONS.contains(&decision) {
                return Err(format!(
                    "an approval needs `decision`, one of {}",
                    t3::DECISIONS.join(", ")
                ));
            }
            RespondBody::Decision(decision.to_string())
        }
        QuestionKind::UserInput => {
            let valid = |a: &serde_json::Value| {
                a.is_string()
                    || a.as_array()
                        .is_some_and(|l| l.iter().all(serde_json::Value::is_string))
            };
            match (
                v.get("answers").and_then(serde_json::Value::as_object),
                v.get("text").and_then(serde_json::Value::as_str),
            ) {
                (Some(answers), _) => {
                    let known = |k: &String| question.questions.iter().any(|q| &q.id == k);
                    if answers.is_empty() || !answers.iter().all(|(k, a)| known(k) && valid(a)) {
                        return Err(
                            "`answers` must map the asked question ids to text or lists of labels".into(),
                        );
                    }
                    RespondBody::Answers(answers.clone().into_iter().collect())
                }
                (None, Some(text)) if question.questions.len() == 1 && !text.trim().is_empty() => {
                    RespondBody::Answers([(question.questions[0].id.clone(), serde_json::json!(text))].into())
                }
                (None, Some(_)) => {
                    return Err("several questions were asked: give `answers` by question id".into());
                }
                (None, None) => return Err("an answer needs `text` or `answers`".into()),
            }
        }
    };
    Ok(Respond { body, by })
}

/// The status form of a pending request, with one human-readable line.
fn question_from(pending: &t3::PendingRequest, now: Time) -> Question {
    match &pending.ask {
        t3::Ask::Approval { request_kind, detail } => Question {
            kind: QuestionKind::Approval,
            request_id: pending.request_id.clone(),
            text: format!(
                "approve {request_kind}{}",
                detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
            )
            .chars()
            .take(1024)
            .collect(),
            request_kind: Some(request_kind.clone()),
            detail: detail.clone(),
            questions: vec![],
            asked_at: now,
            notified: false,
        },
        t3::Ask::UserInput { questions } => Question {
            kind: QuestionKind::UserInput,
            request_id: pending.request_id.clone(),
            text: questions
                .iter()
                .map(|q| {
                    if q.options.is_empty() {
                        q.question.clone()
                    } else {
                        format!("{} ({})", q.question, q.options.join(" / "))
                    }
                })
                .collect::<Vec<_>>()
                .join("; ")
                .chars()
                .take(1024)
                .collect(),
            request_kind: None,
            detail: None,
            questions: questions
                .iter()
                .map(|q| QuestionItem {
                    id: q.id.clone(),
                    header: q.header.clone(),
                    question: q.question.clone(),
                    options: q.options.clone(),
                    multi_select: q.multi_select,
                })
                .collect(),
            asked_at: now,
            notified: false,
        },
    }
}
