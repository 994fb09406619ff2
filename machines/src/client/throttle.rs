//! Client-side rate limiting of Machines API calls: one token bucket per action, plus a
//! client-wide pause after the API answers 429.
//!
//! The buckets are governor limiters driven by tokio's clock instead of the system clock, so
//! waiting goes through `tokio::time::sleep` and tests can run it under paused time.

use std::fmt;
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// Request rates the client stays under, in requests per second with a burst allowance.
///
/// `create_*` applies to machine creation, `get_*` to get and list, and `other_*` to each of
/// wait, stop and destroy, which get one bucket each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub create_per_second: u32,
    pub create_burst: u32,
    pub get_per_second: u32,
    pub get_burst: u32,
    pub other_per_second: u32,
    pub other_burst: u32,
}

impl Default for RateLimits {
    /// Fly's published Machines API limits (checked early 2024): 1 request per second with
    /// bursts of 3 for each action, and 5 per second with bursts of 10 for get.
    ///
    /// NOTE: Fly counts most actions per machine, while these buckets are per client, so a
    /// client acting on many machines at once stays well below what Fly allows.
    fn default() -> Self {
        RateLimits {
            create_per_second: 1,
            create_burst: 3,
            get_per_second: 5,
            get_burst: 10,
            other_per_second: 1,
            other_burst: 3,
        }
    }
}

/// A Machines API call, used to pick its rate limit bucket and to name it in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Create,
    Get,
    List,
    Wait,
    Stop,
    Destroy,
}

impl Action {
    const ALL: [Action; 6] = [
        Action::Create,
        Action::Get,
        Action::List,
        Action::Wait,
        Action::Stop,
        Action::Destroy,
    ];

    fn index(self) -> usize {
        self as usize
    }

    fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create machine",
            Action::Get => "get machine",
            Action::List => "list machines",
            Action::Wait => "wait for machine",
            Action::Stop => "stop machine",
            Action::Destroy => "destroy machine",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rate limit in [`RateLimits`] that is zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroRateLimit {
    pub action: Action,
    pub field: &'static str,
}

type ActionLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// The per-action buckets and the pause set by 429 responses.
pub(crate) struct Throttle {
    limiters: Vec<ActionLimiter>,
    paused_until: Mutex<Option<Instant>>,
}

impl Throttle {
    /// Builds one bucket per action; a zero rate or burst is rejected.
    pub(crate) fn new(limits: &RateLimits) -> Result<Self, ZeroRateLimit> {
        let limiters = Action::ALL
            .iter()
            .map(|&action| {
                let quota = quota_for(limits, action)?;
                Ok(RateLimiter::direct_with_clock(quota, TokioClock))
            })
            .collect::<Result<Vec<_>, ZeroRateLimit>>()?;
        Ok(Throttle {
            limiters,
            paused_until: Mutex::new(None),
        })
    }

    /// Waits until a 429 pause is over and `action`'s bucket has a token, then takes it.
    pub(crate) async fn until_ready(&self, action: Action) {
        let limiter = &self.limiters[action.index()];
        loop {
            if let Some(until) = self.paused_until() {
                tokio::time::sleep_until(until).await;
            }
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(TokioClock.now())).await;
                }
            }
        }
    }

    /// Holds every action back for `delay` from now; a longer pause already set stays.
    pub(crate) fn pause(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        let paused = *self
            .paused_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        paused.filter(|&until| until > Instant::now())
    }
}

fn quota_for(limits: &RateLimits, action: Action) -> Result<Quota, ZeroRateLimit> {
    let (rate, burst, rate_field, burst_field) = match action {
        Action::Create => (
            limits.create_per_second,
            limits.create_burst,
            "create_per_second",
            "create_burst",
        ),
        Action::Get | Action::List => (
            limits.get_per_second,
            limits.get_burst,
            "get_per_second",
            "get_burst",
        ),
        Action::Wait | Action::Stop | Action::Destroy => (
            limits.other_per_second,
            limits.other_burst,
            "other_per_second",
            "other_burst",
        ),
    };
    let nonzero = |value: u32, field| NonZeroU32::new(value).ok_or(ZeroRateLimit { action, field });
    Ok(Quota::per_second(nonzero(rate, rate_field)?).allow_burst(nonzero(burst, burst_field)?))
}

/// A governor clock that reads tokio's clock, which tests can pause and advance.
#[derive(Debug, Clone, Copy)]
struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        self.0
            .checked_sub(duration.into())
            .map_or(*self, TokioInstant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32) -> RateLimits {
        RateLimits {
            create_per_second: per_second,
            create_burst: burst,
            ..RateLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn create_bucket_spaces_calls_after_burst() {
        let throttle = Throttle::new(&limits(1, 3)).expect("valid limits");
        let start = Instant::now();

        let mut offsets = Vec::new();
        for _ in 0..6 {
            throttle.until_ready(Action::Create).await;
            offsets.push(start.elapsed().as_millis());
        }

        assert_eq!(offsets, vec![0, 0, 0, 1000, 2000, 3000]);
    }

    #[tokio::test(start_paused = true)]
    async fn actions_have_separate_buckets() {
        let throttle = Throttle::new(&limits(1, 1)).expect("valid limits");
        let start = Instant::now();

        throttle.until_ready(Action::Create).await;
        throttle.until_ready(Action::Get).await;
        throttle.until_ready(Action::Stop).await;

        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn pause_holds_back_every_action() {
        let throttle = Throttle::new(&RateLimits::default()).expect("valid limits");
        let start = Instant::now();

        throttle.pause(Duration::from_secs(4));
        throttle.pause(Duration::from_secs(1));
        throttle.until_ready(Action::Get).await;

        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[test]
    fn zero_rate_names_the_field() {
        let error = Throttle::new(&RateLimits {
            other_burst: 0,
            ..RateLimits::default()
        })
        .err()
        .expect("zero burst rejected");

        assert_eq!(error.field, "other_burst");
        assert_eq!(error.action, Action::Wait);
    }
}
