// The epoch shuffle of kernels/data.cu (shuffle_order), compiled for the CPU through cuda_on_cpu.h and launched
// as src/backend/cuda/data.rs launches it (grid_1d: blocks of 256 threads; a cap of 3 blocks stands in for
// MAX_BLOCKS so that threads walk the grid-stride loop). Arguments: pairs of rows and key. For each pair it
// checks that the order is a permutation of 0..rows and that the index after it (a guard) is untouched, and
// prints the order on a line "order <rows>: <row> <row> ...", which tests/kernels_on_cpu.rs compares with
// the Rust twin (src/backend/shuffle.rs). Exits non-zero after printing every failure.
#include <algorithm>
#include <cstdlib>
#include <vector>

#include "data.cu"
#include "check_util.h"

int main(int argc, char** argv) {
    constexpr unsigned int GUARD = 0xFFFFFFFFu;
    for (int a = 1; a + 1 < argc; a += 2) {
        const unsigned int rows = (unsigned int)std::strtoul(argv[a], nullptr, 10);
        const unsigned long long key = std::strtoull(argv[a + 1], nullptr, 10);
        std::vector<unsigned int> order(rows + 1, GUARD);
        if (rows > 0) {
            launch(shuffle_order, grid_1d(rows, 3), dim3(THREADS), order.data(), rows, key);
        }
        ++checked;
        if (order[rows] != GUARD) {
            fail("rows %u: the index after the order was overwritten with %u", rows, order[rows]);
        }
        std::vector<unsigned int> sorted(order.begin(), order.begin() + rows);
        std::sort(sorted.begin(), sorted.end());
        for (unsigned int i = 0; i < rows; ++i) {
            if (sorted[i] != i) {
                fail("rows %u: not a permutation (sorted, position %u holds %u)", rows, i, sorted[i]);
                break;
            }
        }
        std::printf("order %u:", rows);
        for (unsigned int i = 0; i < rows; ++i) std::printf(" %u", order[i]);
        std::printf("\n");
    }
    return report("shuffle_checks", "orders");
}
