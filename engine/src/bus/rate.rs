//! Per-agent rate limits: a token bucket refilled at `per_second` up to
//! `burst`. Time comes in as a parameter (ms, from the bus's clock), so the
//! bucket itself is deterministic and tested without sleeping.

/// A rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained messages per second (≥ 1).
    pub per_second: u32,
    /// Most messages in a burst (≥ 1).
    pub burst: u32,
}

/// One agent's bucket. Tokens are kept in thousandths so a refill of a
/// fraction of a token is not lost.
#[derive(Clone, Debug)]
pub struct Bucket {
    limit: RateLimit,
    milli_tokens: u64,
    last_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    #[must_use]
    pub fn new(limit: RateLimit, now_ms: u64) -> Bucket {
        Bucket {
            limit,
            milli_tokens: u64::from(limit.burst.max(1)) * 1000,
            last_ms: now_ms,
        }
    }

    /// The limit in force.
    #[must_use]
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one token if there is one; otherwise says how long until there is.
    ///
    /// # Errors
    /// The wait, ms, until the next token.
    pub fn take(&mut self, now_ms: u64) -> Result<(), u64> {
        let cap = u64::from(self.limit.burst.max(1)) * 1000;
        let rate = u64::from(self.limit.per_second.max(1));
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // rate tokens per 1000 ms = rate milli-tokens per ms.
        self.milli_tokens = (self.milli_tokens + elapsed.saturating_mul(rate)).min(cap);
        self.last_ms = self.last_ms.max(now_ms);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            Ok(())
        } else {
            Err((1000 - self.milli_tokens).div_ceil(rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let mut b = Bucket::new(
            RateLimit {
                per_second: 10,
                burst: 3,
            },
            0,
        );
        assert!(b.take(0).is_ok());
        assert!(b.take(0).is_ok());
        assert!(b.take(0).is_ok());
        assert_eq!(b.take(0), Err(100));
        assert_eq!(b.take(50), Err(50));
        assert!(b.take(100).is_ok());
        assert!(b.take(100).is_err());
        // Never more than the burst, however long it waited.
        for _ in 0..3 {
            assert!(b.take(10_000).is_ok());
        }
        assert!(b.take(10_000).is_err());
    }
}
