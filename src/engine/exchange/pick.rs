//! The first attempt and the weighted pick of an origin, around blocked and tried ones.

use super::*;

impl Exchange {
    pub(super) fn first_attempt(
        &mut self,
        blocks: &mut BlockTable,
        host: &mut impl Host,
    ) -> Option<Attempt> {
        let now = host.now_ms();
        let domain = self.domain()?;
        // Block state only changes the outcome when there is an alternative to go to, and a
        // domain with `block_seconds: 0` never skips an origin. One 8-byte read tells whether
        // any origin of the domain is blocked; only then are origins' own keys read.
        let health_matters = (domain.master.targets.len() > 1 || domain.slave.is_some())
            && domain.detection.block_ms > 0
            && blocks.domain_has_blocks(host, &domain.name, now);
        self.blocks_possible = health_matters;
        let domain = self.domain()?;
        if let Some(target) = self.choose(Role::Master, blocks, host, health_matters, now) {
            return Some(Attempt {
                role: Role::Master,
                target,
                sent_ms: now,
            });
        }
        // Every master is blocked: straight to the slave when there is one; otherwise a
        // blocked master is a better bet than a certain error.
        if domain.slave.is_some() {
            if let Some(target) = self.choose(Role::Slave, blocks, host, true, now) {
                log::debug!(
                    "{}: every master origin is blocked; going to the slave",
                    domain.name
                );
                return Some(Attempt {
                    role: Role::Slave,
                    target,
                    sent_ms: now,
                });
            }
        }
        log::debug!(
            "{}: every origin is blocked; trying a master anyway",
            domain.name
        );
        self.choose(Role::Master, blocks, host, false, now)
            .map(|target| Attempt {
                role: Role::Master,
                target,
                sent_ms: now,
            })
    }

    /// Weighted pick in `role`'s set, skipping origins already tried for this request and,
    /// when `respect_blocks`, blocked ones.
    /// Only the origins the pick draws have their block read (one shared-data read each,
    /// remembered for this pick), so the cost does not grow with the number blocked.
    pub(super) fn choose(
        &self,
        role: Role,
        blocks: &BlockTable,
        host: &mut impl Host,
        respect_blocks: bool,
        now: u64,
    ) -> Option<usize> {
        let set = self.set(role)?;
        let domain = self.domain()?;
        let scheme = self.scheme;
        let tried = &self.tried;
        let respect_blocks = respect_blocks && domain.detection.block_ms > 0;
        let any_excluded = respect_blocks || tried.iter().any(|a| a.role == role);
        // One draw from the host; further draws (only when something is excluded) from a
        // generator seeded by it, so the block reads below can borrow the host.
        let mut state = host.random_u64();
        let mut draws = 0u32;
        let mut random = || {
            draws += 1;
            if draws > 1 {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
            }
            state.wrapping_mul(if draws > 1 { 0x2545_F491_4F6C_DD1D } else { 1 })
        };
        if !any_excluded {
            return select::pick(set, &mut random, false, &|_| false);
        }
        let host = &*host;
        // 0 = not read yet, 1 = not blocked, 2 = blocked.
        let seen = std::cell::RefCell::new(if respect_blocks {
            vec![0u8; set.targets.len()]
        } else {
            Vec::new()
        });
        let excluded = |i: usize| {
            if tried.iter().any(|a| a.role == role && a.target == i) {
                return true;
            }
            if !respect_blocks {
                return false;
            }
            let mut seen = seen.borrow_mut();
            match seen.get(i).copied() {
                Some(1) | None => false,
                Some(2) => true,
                Some(_) => {
                    let blocked = set.targets.get(i).is_some_and(|t| {
                        blocks.is_blocked(host, &domain.name, &t.route(scheme).label, now)
                    });
                    if let Some(slot) = seen.get_mut(i) {
                        *slot = if blocked { 2 } else { 1 };
                    }
                    blocked
                }
            }
        };
        select::pick(set, &mut random, true, &excluded)
    }
}
