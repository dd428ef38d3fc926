// The MSE loss of kernels/loss.cu, compiled for the CPU through cuda_on_cpu.h and run as
// src/backend/cuda/loss.rs runs it: mse_backward over min(⌈n/MSE_THREADS⌉, MSE_MAX_BLOCKS) blocks writing one
// partial each into a scratch of MSE_MAX_BLOCKS doubles, then mse_finalize (one block) summing the first
// `blocks` of them into loss[0]; with n == 0 only mse_finalize runs (num_partials 0) and must write 0.
// Smaller caps stand in for MSE_MAX_BLOCKS so that a few blocks walk the grid-stride loop. Checked against
// the contract:
//   - grad = scale·(pred − target)·f'(pred) with scale = (float)(2/count): the CPU twin's float operations
//     in its order, so bit for bit;
//   - loss[0] = Σ (double)((pred − target)²) rounded once to float: the sums differ from an f64 reference
//     only in the order of the double additions, so within rtol 1.2e-7 (the final rounding is half an ulp,
//     at most 6e-8 relative); and bit for bit where every diff is 1 + 2⁻¹², whose float square is a tie that
//     rounds away 2⁻²⁴ (so double squares would show).
// mse_finalize is also run alone over 0..MSE_MAX_BLOCKS synthetic partials (more than its 256 threads, so
// its strided loop runs). The scratch is NaN beyond what a launch may read; pred, target, grad and loss have
// NaN guards on both sides. Built and run by tests/kernels_on_cpu.rs; exits non-zero after printing every
// failure.
#include "loss.cu"
#include "check_util.h"

// src/backend/cuda/launch.rs says the same.
static_assert(MSE_THREADS == 256 && MSE_MAX_BLOCKS == 1024, "MSE_THREADS / MSE_MAX_BLOCKS of src/backend/cuda/launch.rs");

namespace {

// The backend's partial-sum scratch, NaN wherever no launch has written: reading a stale partial shows.
std::vector<double> scratch() { return std::vector<double>(MSE_MAX_BLOCKS, NAN); }

// mse_backward of src/backend/cuda/loss.rs, with the grid cap as a parameter (MSE_MAX_BLOCKS there).
void host_mse_backward(const float* pred, const float* target, unsigned int act, size_t count, float* grad,
                       float* loss, size_t n, double* partials, size_t cap) {
    const float scale = (float)(2.0 / (double)count);
    const size_t blocks = std::min((n + MSE_THREADS - 1) / MSE_THREADS, cap);
    if (blocks > 0) {
        launch(mse_backward, dim3((unsigned int)blocks), dim3(MSE_THREADS), pred, target, grad, partials,
               (unsigned long long)n, scale, act);
    }
    launch(mse_finalize, dim3(1), dim3(MSE_THREADS), (const double*)partials, (unsigned int)blocks, loss);
}

void check_mse(size_t n, size_t count, unsigned int act, size_t cap) {
    Padded pred(n), target(n), grad(n), loss(1);
    for (size_t i = 0; i < n; ++i) {
        pred[i] = next_uniform();
        if (act == ACT_SIGMOID) pred[i] = 0.5f + 0.5f * pred[i];
        target[i] = next_uniform();
    }
    if (n >= 8) {
        pred[1] = 0.0f;  // relu'(0) = 0
        target[5] = pred[5];
    }
    std::vector<double> partials = scratch();
    host_mse_backward(pred.data(), target.data(), act, count, grad.data(), loss.data(), n, partials.data(), cap);

    const float scale = (float)(2.0 / (double)count);
    long double sum = 0.0L;
    for (size_t i = 0; i < n; ++i) {
        const float diff = pred[i] - target[i];
        sum += (double)(diff * diff);
        const float want = scale * diff * grad_from_output(pred[i], act);
        ++checked;
        if (!same(grad[i], want)) {
            fail("mse grad n=%zu count=%zu act=%u cap=%zu at %zu: %.9g, want %.9g", n, count, act, cap, i, grad[i],
                 want);
        }
    }
    const double want = (double)sum;
    ++checked;
    if (!(std::fabs((double)loss[0] - want) <= 1.2e-7 * want) || (n == 0 && bits_of(loss[0]) != 0u)) {
        fail("mse loss n=%zu count=%zu act=%u cap=%zu: %.9g, want %.12g", n, count, act, cap, loss[0], want);
    }
    check_guards("mse pred", pred);
    check_guards("mse target", target);
    check_guards("mse grad", grad);
    check_guards("mse loss", loss);
}

// The loss sums float squares, (double)(diff·diff), not double ones: every diff TIE (see check_util.h).
void check_float_squares(size_t n) {
    Padded pred(n), target(n), grad(n), loss(1);
    for (size_t i = 0; i < n; ++i) {
        pred[i] = TIE;
        target[i] = 0.0f;
    }
    std::vector<double> partials = scratch();
    host_mse_backward(pred.data(), target.data(), ACT_LINEAR, n, grad.data(), loss.data(), n, partials.data(),
                      MSE_MAX_BLOCKS);
    check_sum_of_tie_squares("mse loss of float squares", n, loss[0]);
}

// mse_finalize alone over `num` partials in [0, 1) (squares are never negative).
void check_finalize(unsigned int num) {
    std::vector<double> partials = scratch();
    long double sum = 0.0L;
    for (unsigned int i = 0; i < num; ++i) {
        partials[i] = 0.5 + 0.5 * next_uniform();
        sum += partials[i];
    }
    Padded loss(1);
    launch(mse_finalize, dim3(1), dim3(MSE_THREADS), (const double*)partials.data(), num, loss.data());
    const double want = (double)sum;
    ++checked;
    if (!(std::fabs((double)loss[0] - want) <= 1.2e-7 * want) || (num == 0 && bits_of(loss[0]) != 0u)) {
        fail("mse_finalize num_partials=%u: %.9g, want %.12g", num, loss[0], want);
    }
    check_guards("mse_finalize loss", loss);
}

}  // namespace

int main() {
    seed_rng(777u);
    const unsigned int acts[] = {ACT_LINEAR, ACT_RELU, ACT_TANH, ACT_SIGMOID};
    // (n, cap): empty (only mse_finalize runs), one element, around one block, several blocks, capped grids
    // of 1, 2 and 5 blocks over many blocks' worth of elements.
    const size_t cases[][2] = {{0, MSE_MAX_BLOCKS},   {1, MSE_MAX_BLOCKS}, {255, MSE_MAX_BLOCKS}, {256, MSE_MAX_BLOCKS},
                               {257, MSE_MAX_BLOCKS}, {1300, MSE_MAX_BLOCKS}, {3000, 1}, {2049, 2}, {5000, 5}};
    int variant = 0;
    for (const auto& c : cases) {
        for (unsigned int act : acts) {
            // count is the batch's element count, here n except now and then (the scale is 2/count).
            const size_t count = (variant++ % 3 == 2) ? 3 * c[0] + 1 : std::max<size_t>(c[0], 1);
            check_mse(c[0], count, act, c[1]);
        }
    }
    // More blocks than mse_finalize has threads: it sums 300 partials with its strided loop.
    check_mse(300 * MSE_THREADS - 17, 300 * MSE_THREADS - 17, ACT_TANH, MSE_MAX_BLOCKS);
    check_float_squares(3);
    check_float_squares(300);
    for (unsigned int num : {0u, 1u, 2u, 255u, 256u, 257u, 511u, 1000u, (unsigned int)MSE_MAX_BLOCKS}) {
        check_finalize(num);
    }
    return report("loss_checks", "values");
}
