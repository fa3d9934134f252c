//! Streaming body wrappers: the request size limit and the response body
//! timeouts. Neither buffers: frames pass through as they come.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::Upstream;
use super::error::{BodyTimeout, BodyTooLarge};
use crate::body::BoxError;

pin_project_lite::pin_project! {
    /// Counts request body bytes and fails past the limit.
    pub(crate) struct LimitedBody<B> {
        #[pin]
        inner: B,
        seen: u64,
        limit: Option<u64>,
        tripped: Arc<AtomicBool>,
    }
}

impl<B> LimitedBody<B> {
    pub(crate) fn new(inner: B, limit: Option<u64>, tripped: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner,
            seen: 0,
            limit,
            tripped,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if this.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
        }
        match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen = this.seen.saturating_add(data.len() as u64);
                    if this.limit.is_some_and(|l| *this.seen > l) {
                        this.tripped.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a body-timeout log line belongs.
#[derive(Debug)]
pub(crate) struct LogContext {
    /// `-` when the request has none.
    pub(crate) request_id: Arc<str>,
    pub(crate) route: Arc<str>,
    /// The upstream's URL.
    pub(crate) upstream: Upstream,
}

pin_project_lite::pin_project! {
    /// Fails the response body when the upstream sends no frame for `idle`,
    /// or when the total deadline passes. The idle clock runs only while
    /// the body waits on the upstream: it starts at a `Pending` that follows
    /// a frame (or the first poll) and stops at the next frame, so a client
    /// reading slowly (backpressure) does not count. A body that is always
    /// ready (a small answer read with its head) never starts the clock:
    /// its timer is made the first time it waits.
    pub(crate) struct TimedBody<B> {
        #[pin]
        inner: B,
        idle: Duration,
        // Waiting on the upstream since the idle clock last started.
        waiting: bool,
        idle_sleep: Option<Pin<Box<Sleep>>>,
        deadline: Option<Pin<Box<Sleep>>>,
        ctx: LogContext,
    }
}

impl<B> TimedBody<B> {
    pub(crate) fn new(
        inner: B,
        idle: Duration,
        deadline: Option<Instant>,
        ctx: LogContext,
    ) -> Self {
        TimedBody {
            inner,
            idle,
            waiting: false,
            idle_sleep: None,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            ctx,
        }
    }
}

impl<B> TimedBody<B> {
    fn fail(ctx: &LogContext, why: BodyTimeout) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::warn!(
            request_id = %ctx.request_id,
            route = %ctx.route,
            upstream = %ctx.upstream.url(),
            error = %why,
            "upstream response body cut"
        );
        Poll::Ready(Some(Err(Box::new(why))))
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(d) = this.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                return Self::fail(this.ctx, BodyTimeout::Total);
            }
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = *this.idle;
                let sleep = match this.idle_sleep {
                    Some(sleep) => {
                        if !*this.waiting {
                            sleep.as_mut().reset(Instant::now() + idle);
                        }
                        sleep
                    }
                    None => this.idle_sleep.insert(Box::pin(tokio::time::sleep(idle))),
                };
                *this.waiting = true;
                if sleep.as_mut().poll(cx).is_ready() {
                    return Self::fail(this.ctx, BodyTimeout::Idle);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full};

    #[tokio::test]
    async fn limit_cuts_past_the_limit() {
        let flag = Arc::new(AtomicBool::new(false));
        let body = LimitedBody::new(
            Full::new(Bytes::from_static(b"12345")),
            Some(4),
            flag.clone(),
        );
        let err = body.collect().await.unwrap_err();
        assert!(err.is::<BodyTooLarge>());
        assert!(flag.load(Ordering::Relaxed));

        let flag = Arc::new(AtomicBool::new(false));
        let body = LimitedBody::new(
            Full::new(Bytes::from_static(b"1234")),
            Some(4),
            flag.clone(),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 4);
        assert!(!flag.load(Ordering::Relaxed));
    }

    /// A body that never yields.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    fn ctx() -> LogContext {
        LogContext {
            request_id: "r".into(),
            route: "x".into(),
            upstream: Upstream::new("http://127.0.0.1:1", &Default::default()).unwrap(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_body_times_out() {
        let timed = TimedBody::new(Stalled, Duration::from_secs(1), None, ctx());
        let err = timed.collect().await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<BodyTimeout>(),
            Some(BodyTimeout::Idle)
        ));

        let deadline = Instant::now() + Duration::from_secs(1);
        let timed = TimedBody::new(Stalled, Duration::from_secs(10), Some(deadline), ctx());
        let err = timed.collect().await.unwrap_err();
        assert!(matches!(
            err.downcast_ref::<BodyTimeout>(),
            Some(BodyTimeout::Total)
        ));
    }

    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slow_reader_is_not_idle() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut timed = TimedBody::new(Channel(rx), Duration::from_secs(1), None, ctx());
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(timed.frame().await.unwrap().is_ok());
        pause_then_answer(&mut timed, tx).await;
    }

    /// The client does not read for longer than the idle timeout, then the
    /// upstream answers within it once the body is read again: no timeout.
    async fn pause_then_answer(
        timed: &mut TimedBody<Channel>,
        tx: tokio::sync::mpsc::Sender<Bytes>,
    ) {
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(Bytes::from_static(b"b")).await.unwrap();
        });
        assert_eq!(
            timed.frame().await.unwrap().unwrap().into_data().unwrap(),
            "b"
        );
        assert!(timed.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_in_reading_after_a_wait_is_not_idle_either() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut timed = TimedBody::new(Channel(rx), Duration::from_secs(1), None, ctx());
        let upstream = tokio::spawn(async move {
            // The body waits on the upstream first (the idle clock runs)…
            tokio::time::sleep(Duration::from_millis(500)).await;
            tx.send(Bytes::from_static(b"a")).await.unwrap();
            tx
        });
        assert!(timed.frame().await.unwrap().is_ok());
        // …then the client pauses.
        pause_then_answer(&mut timed, upstream.await.unwrap()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_silent_after_a_frame_still_times_out() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut timed = TimedBody::new(Channel(rx), Duration::from_secs(1), None, ctx());
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(timed.frame().await.unwrap().is_ok());
        // The sender stays open and sends nothing more.
        let err = timed.frame().await.unwrap().unwrap_err();
        assert!(matches!(
            err.downcast_ref::<BodyTimeout>(),
            Some(BodyTimeout::Idle)
        ));
        drop(tx);
    }
}
